"""The ONE state-store conformance suite: SQLite always, MongoDB when
FEDGATE_TEST_MONGODB_URI points at a server."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from fedgate.store import open_store


@pytest.fixture(params=["sqlite", "mongodb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        uri = os.environ.get("FEDGATE_TEST_MONGODB_URI")
        if not uri:
            pytest.skip("FEDGATE_TEST_MONGODB_URI is not set: no MongoDB server can be had on "
                        "this machine (see TESTBED.md)")
        base = uri.rstrip("/")
        s = open_store(f"{base}_{uuid.uuid4().hex[:8]}" if "/" in base.split("//", 1)[1]
                       else f"{base}/fedgate_test_{uuid.uuid4().hex[:8]}")
    yield s
    s.close()


def test_records(store):
    assert store.get_record("key", "site-a") is None
    store.put_record("key", "site-a", {"installed": True, "n": 1})
    assert store.get_record("key", "site-a") == {"installed": True, "n": 1}
    store.put_record("key", "site-a", {"installed": False})
    assert store.get_record("key", "site-a") == {"installed": False}
    store.delete_record("key", "site-a")
    assert store.get_record("key", "site-a") is None
    store.ping()


def _lock(root: str, token: str, expire: float) -> dict:
    return {"root": root, "type": "write", "scope": "exclusive", "depth": "infinity",
            "owner": b"<D:owner xmlns:D='DAV:'>me</D:owner>", "timeout": 60.0,
            "principal": "alice", "token": token, "expire": expire}


def test_locks(store):
    now = time.time()
    store.lock_put("t1", "/s/a", now + 60, _lock("/s/a", "t1", now + 60))
    store.lock_put("t2", "/s/a/b/c", now + 60, _lock("/s/a/b/c", "t2", now + 60))
    store.lock_put("t3", "/s/ab", now + 60, _lock("/s/ab", "t3", now + 60))
    store.lock_put("t4", "/s/a/old", now - 1, _lock("/s/a/old", "t4", now - 1))
    got = store.lock_get("t1")
    assert got["owner"] == b"<D:owner xmlns:D='DAV:'>me</D:owner>" and got["root"] == "/s/a"
    assert store.lock_get("t4") is None  # expired
    assert {lk["token"] for lk in store.locks_at("/s/a", True, False)} == {"t1"}
    assert {lk["token"] for lk in store.locks_at("/s/a", False, True)} == {"t2"}
    assert {lk["token"] for lk in store.locks_at("/s/a", True, True)} == {"t1", "t2"}
    assert store.lock_delete("t1") and not store.lock_delete("t1")
    store.locks_clear()
    assert store.locks_at("/s", True, True) == []


def test_properties(store):
    store.prop_set("/s/d", "{u:}a", "<a>1</a>")
    store.prop_set("/s/d/f", "{u:}b", "<b>2</b>")
    store.prop_set("/s/d/sub/g", "{u:}c", "<c>3</c>")
    store.prop_set("/s/dx", "{u:}d", "<d>4</d>")
    assert store.props_get("/s/d") == {"{u:}a": "<a>1</a>"}
    tree = store.props_tree("/s/d", depth=1)
    assert set(tree) == {"/s/d", "/s/d/f"}
    store.props_copy("/s/d", "/s/e", recursive=True)
    assert store.props_get("/s/e/sub/g") == {"{u:}c": "<c>3</c>"}
    store.props_move("/s/d", "/s/m")
    assert store.props_get("/s/d/f") == {} and store.props_get("/s/m/f") == {"{u:}b": "<b>2</b>"}
    assert store.props_get("/s/dx") == {"{u:}d": "<d>4</d>"}, "sibling prefix touched"
    store.prop_remove("/s/m", "{u:}a")
    assert store.props_get("/s/m") == {}
    store.props_delete("/s/m", recursive=True)
    assert store.props_tree("/s/m", depth=5) == {}


def test_concurrent_writers(store):
    errors = []

    def work(i):
        try:
            for j in range(50):
                store.prop_set(f"/s/{i}", f"{{u:}}p{j}", str(j))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(len(store.props_get(f"/s/{i}")) == 50 for i in range(8))


def _open_and_write(url: str) -> None:
    s = open_store(url)
    s.put_record("proc", str(os.getpid()), {"ok": True})
    s.close()


def test_sqlite_new_file_opened_by_many_processes_at_once(tmp_path):
    """Roles started together must not trip over WAL setup or schema creation."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for i in range(5):
        url = f"sqlite:///{tmp_path / f'race{i}.db'}"
        procs = [ctx.Process(target=_open_and_write, args=(url,)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 6
        s = open_store(url)
        assert s.get_record("proc", str(procs[0].pid)) == {"ok": True}
        s.close()
