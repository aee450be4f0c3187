"""The store's job, webhook, lease and catalogue operations, including claims
from several processes at once (every job claimed exactly once).  SQLite always;
MongoDB too when FEDGATE_TEST_MONGODB_URI is set (same shape as tests/store/)."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid

import pytest

from fedgate.store import open_store


@pytest.fixture(params=["sqlite", "mongodb"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    uri = os.environ.get("FEDGATE_TEST_MONGODB_URI")
    if not uri:
        pytest.skip("FEDGATE_TEST_MONGODB_URI is not set: no MongoDB server can be had on "
                    "this machine (see TESTBED.md)")
    return f"{uri.rstrip('/')}/fedgate_test_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def _doc(i: int, webhook: bool = False) -> dict:
    d = {"id": f"j{i:04d}", "user": "u", "status": "queued", "created_at": time.time() + i * 1e-6,
         "from": "a:/x", "to": "b:/x", "body_hash": f"h{i}", "webhook": None}
    if webhook:
        d["webhook"] = {"url": "http://x", "event_id": "msg_1", "state": "waiting",
                        "deliveries": []}
    return d


def _claimer(url: str, owner: str, q) -> None:
    store = open_store(url)
    got = []
    while (doc := store.job_claim(owner, 60)) is not None:
        got.append(doc["id"])
    store.close()
    q.put(got)


def test_claims_across_processes(store, store_url):
    for i in range(200):
        store.job_insert(_doc(i))
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(store_url, f"w{n}", q)) for n in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    claimed = [j for r in results for j in r]
    assert sorted(claimed) == [f"j{i:04d}" for i in range(200)]
    assert store.job_counts() == {"running": 200}


def test_state_machine(store):
    doc, created = store.job_insert(_doc(1, webhook=True))
    assert created and doc["status"] == "queued"
    again, created = store.job_insert({**_doc(1), "body_hash": "other"})
    assert not created and again["body_hash"] == "h1"
    job = store.job_claim("w1", 0.2)
    assert job["status"] == "running" and job["claims"] == 1 and job["started_at"]
    assert store.job_claim("w2", 10) is None  # leased
    assert store.job_update("j0001", "w2", {"bytes_done": 5}) is None  # not the owner
    assert store.job_update("j0001", "w1", {"bytes_done": 5}, 0.2)["bytes_done"] == 5
    time.sleep(0.3)  # w1 "dies": its lease expires
    job = store.job_claim("w2", 10)
    assert job["owner"] == "w2" and job["claims"] == 2
    assert store.job_finish("j0001", "w1", "succeeded", {}) is None  # stale owner
    assert store.webhook_claim("d1", 10) is None  # not finished yet
    done = store.job_finish("j0001", "w2", "succeeded", {"checksum": {"sha256": "ab"}})
    assert done["status"] == "succeeded" and done["webhook"]["state"] == "pending"
    assert store.job_finish("j0001", "w2", "failed", {}) is None  # never finished twice
    assert store.job_claim("w3", 10) is None
    wh = store.webhook_claim("d1", 10)
    assert wh["id"] == "j0001" and store.webhook_claim("d2", 10) is None
    assert store.webhook_record("j0001", "d2", {"attempt": 1}, "delivered", None) is None
    rec = store.webhook_record("j0001", "d1", {"attempt": 1}, "pending", time.time() - 1)
    assert rec["webhook"]["deliveries"] == [{"attempt": 1}]
    assert store.webhook_claim("d2", 10)["id"] == "j0001"
    # cancel: queued -> cancelled at once; running -> requested; terminal unchanged
    store.job_insert(_doc(2))
    assert store.job_cancel("j0002")["status"] == "cancelled"
    store.job_insert(_doc(3))
    store.job_claim("w1", 10)
    c = store.job_cancel("j0003")
    assert c["status"] == "running" and c["cancel_requested"]
    assert store.job_cancel("j0001")["status"] == "succeeded"
    assert store.job_cancel("nope") is None
    assert [d["id"] for d in store.job_list(user="u")] == ["j0003", "j0002", "j0001"]
    page = store.job_list(user="u", limit=1, before=(c["created_at"], c["id"]))
    assert [d["id"] for d in page] == ["j0002"]


def test_leases_and_catalogue(store):
    assert store.lease_acquire("crawl:a", "p1", 0.2)
    assert not store.lease_acquire("crawl:a", "p2", 10)
    assert store.lease_acquire("crawl:a", "p1", 10)  # renew
    store.lease_release("crawl:a", "p1")
    assert store.lease_acquire("crawl:a", "p2", 10)
    e = {"basename": "f", "is_dir": False, "size": 1, "mtime": 1.0, "checksum": None}
    store.catalogue_upsert("a", [{**e, "path": "/d/f"}, {**e, "path": "/d/g/f"},
                                 {**e, "path": "/e", "basename": "e"}])
    assert len(store.catalogue_find(name="f")) == 2
    assert [r["path"] for r in store.catalogue_find(glob="[ef]", site="a")] == [
        "/d/f", "/d/g/f", "/e"]
    assert [r["path"] for r in store.catalogue_find(glob="e*")] == ["/e"]
    assert [r["path"] for r in store.catalogue_find(glob="f?")] == []
    assert store.catalogue_delete("a", "/d") == 2
    store.catalogue_set_stale("a", True)
    assert store.catalogue_find(path="/e")[0]["stale"] is True
    t = time.time()
    store.catalogue_upsert("a", [{**e, "path": "/new"}])
    assert store.catalogue_prune("a", t) == 1 and store.catalogue_count() == 1
