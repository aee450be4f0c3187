"""Copy jobs end to end against a real staging server on loopback."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from fedgate.auth import mint_token
from staging.webhooks import verify
from tests.staging.conftest import WEBHOOK_SECRET, Api, make_config, site_dir, start_server


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def no_temp_files(d: Path) -> bool:
    return not [p for p in d.rglob("*") if p.name.startswith(".fedgate-tmp-")]


def test_ee_scenario(server, config, staging_keys, receiver):
    """The EE: token, find, copy with a webhook, signed event, same checksums."""
    src = site_dir(config, "site-a") / "UC1" / "ucdemo-0.1.simg"
    src.parent.mkdir()
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    token = mint_token(staging_keys[0], "ee@process-project.eu", ttl_s=600)
    ee = Api(server.url, auth=None, headers={"x-access-token": token})
    assert ee.post("/api/v1/refresh").status_code == 200
    r = ee.get("/api/v1/find/ucdemo-0.1.simg")
    assert r.status_code == 200, r.text
    [entry] = r.json()
    assert entry["filename"] == "/UC1/ucdemo-0.1.simg"
    assert entry["path"] == "site-a:/UC1/ucdemo-0.1.simg"
    assert entry["size"] == src.stat().st_size
    assert entry["location"]["name"] == "site-a" and entry["type"] == "file"
    assert entry["lastmod"].endswith("+0000")
    body = [{"id": "copy-001", "from": entry["path"], "to": "site-b:/UC1/ucdemo-0.1.simg",
             "webhook": receiver.url}]
    (site_dir(config, "site-b") / "UC1").mkdir()
    r = ee.post("/api/v1/copy", body)
    assert r.status_code == 202, r.text
    assert r.json() == [{"id": "copy-001", "status": "queued",
                         "status_url": f"{server.url}/api/v1/copy/copy-001"}]
    [hook] = receiver.wait_for(1)
    assert hook["method"] == "POST"
    assert verify(WEBHOOK_SECRET, hook["headers"], hook["body"])
    assert not verify("another-secret", hook["headers"], hook["body"])
    event = json.loads(hook["body"])
    assert event["type"] == "copy.succeeded" and event["id"] == "copy-001"
    job = event["job"]
    dst = site_dir(config, "site-b") / "UC1" / "ucdemo-0.1.simg"
    assert job["checksum"]["sha256"] == sha256(src) == sha256(dst)
    assert job["bytes_done"] == job["bytes_total"] == src.stat().st_size
    # every attempt is in the job document
    time.sleep(0.2)
    doc = ee.get("/api/v1/copy/copy-001").json()
    assert doc["webhook"]["state"] == "delivered"
    assert [d["status_code"] for d in doc["webhook"]["deliveries"]] == [200]
    # the copy is in the catalogue at once
    found = ee.get("/api/v1/find/ucdemo-0.1.simg").json()
    assert {e["site"] for e in found} == {"site-a", "site-b"}


def test_signature_format(receiver, server, config, api):
    (site_dir(config, "site-a") / "x").write_bytes(b"x")
    api.post("/api/v1/copy", {"id": "sig", "from": "site-a:/x", "to": "site-b:/x",
                              "webhook": {"url": receiver.url, "method": "PUT",
                                          "headers": {"X-Token": "abc"}}})
    [hook] = receiver.wait_for(1)
    h = hook["headers"]
    assert hook["method"] == "PUT" and h["x-token"] == "abc"
    assert h["webhook-id"].startswith("msg_") and h["webhook-timestamp"].isdigit()
    version, _, sig = h["webhook-signature"].partition(",")
    assert version == "v1" and len(base64.b64decode(sig)) == 32


def test_idempotent_ids(server, config, api):
    (site_dir(config, "site-a") / "a.txt").write_text("hello")
    body = {"id": "same-1", "from": "site-a:/a.txt", "to": "site-b:/a.txt"}
    r1 = api.post("/api/v1/copy", body)
    assert r1.status_code == 202
    api.wait("same-1")
    r2 = api.post("/api/v1/copy", body)
    assert r2.status_code == 202
    assert r2.json()[0]["id"] == "same-1" and r2.json()[0]["status"] == "succeeded"
    r3 = api.post("/api/v1/copy", {**body, "to": "site-b:/b.txt"})
    assert r3.status_code == 409 and r3.json()["error"]["code"] == "id_conflict"
    listed = api.get("/api/v1/copy").json()
    assert [j["id"] for j in listed] == ["same-1"]


def test_cancel_removes_partial_target(server, config, api, receiver):
    src = site_dir(config, "site-a") / "big.bin"
    with open(src, "wb") as fh:  # sparse: cheap to make, real bytes to copy
        fh.truncate(3 * 1024 ** 3)
    r = api.post("/api/v1/copy", {"id": "cx", "from": "site-a:/big.bin",
                                  "to": "site-b:/big.bin", "webhook": receiver.url})
    assert r.status_code == 202
    api.wait("cx", until=("running",))
    end = time.time() + 20
    while api.get("/api/v1/copy/cx").json()["bytes_done"] == 0 and time.time() < end:
        time.sleep(0.02)
    t0 = time.time()
    r = api.delete("/api/v1/copy/cx")
    assert r.status_code in (200, 202), r.text
    doc = api.wait("cx", timeout=10)
    assert doc["status"] == "cancelled", doc
    assert time.time() - t0 < 3
    assert 0 < doc["bytes_done"] < 3 * 1024 ** 3
    b = site_dir(config, "site-b")
    assert not (b / "big.bin").exists() and no_temp_files(b)
    [hook] = receiver.wait_for(1)
    assert json.loads(hook["body"])["type"] == "copy.cancelled"
    # cancelling again changes nothing
    assert api.delete("/api/v1/copy/cx").json()["status"] == "cancelled"


def test_cancel_queued(tmp_path, staging_keys, blockbuster, blocking_log):
    cfg = make_config(tmp_path, staging_keys[1])
    srv = start_server(cfg, workers=False)  # nothing runs the job
    try:
        api = Api(srv.url)
        (site_dir(cfg, "site-a") / "q").write_text("q")
        api.post("/api/v1/copy", {"id": "q1", "from": "site-a:/q", "to": "site-b:/q"})
        assert api.get("/api/v1/copy/q1").json()["status"] == "queued"
        r = api.delete("/api/v1/copy/q1")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    finally:
        srv.stop()


def test_twenty_concurrent_copies(server, config, api):
    a, b = site_dir(config, "site-a"), site_dir(config, "site-b")
    for i in range(20):
        (a / f"f{i:02d}.bin").write_bytes(os.urandom(512 * 1024 + i))

    def submit(i: int) -> int:
        r = Api(server.url).post("/api/v1/copy", {
            "id": f"c{i:02d}", "from": f"site-a:/f{i:02d}.bin", "to": f"site-b:/f{i:02d}.bin"})
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        assert set(ex.map(submit, range(20))) == {202}
    for i in range(20):
        doc = api.wait(f"c{i:02d}")
        assert doc["status"] == "succeeded", doc
        assert doc["checksum"]["sha256"] == sha256(a / f"f{i:02d}.bin") == sha256(
            b / f"f{i:02d}.bin")
    page = api.get("/api/v1/copy?limit=5")
    assert len(page.json()) == 5 and 'rel="next"' in page.headers["Link"]
    nxt = page.headers["Link"].split(";")[0].strip("<>")
    page2 = api.get(nxt).json()
    assert len(page2) == 5 and not {j["id"] for j in page2} & {j["id"] for j in page.json()}
    assert len(api.get("/api/v1/copy?status=succeeded&limit=100").json()) == 20


def test_recursive_move_and_overwrite(server, config, api):
    a, b = site_dir(config, "site-a"), site_dir(config, "site-b")
    (a / "tree" / "sub" / "deeper").mkdir(parents=True)
    files = {"tree/x.txt": b"x" * 10, "tree/sub/y.txt": b"y" * 1000,
             "tree/sub/deeper/z.bin": os.urandom(2 * 1024 * 1024)}
    for rel, data in files.items():
        (a / rel).write_bytes(data)
    api.post("/api/v1/copy", {"id": "nr", "from": "site-a:/tree", "to": "site-b:/tree"})
    doc = api.wait("nr")
    assert doc["status"] == "failed" and doc["error"]["code"] == "is_a_directory"
    api.post("/api/v1/copy", {"id": "r", "from": "site-a:/tree", "to": "site-b:/tree",
                              "recursive": True, "move": True})
    doc = api.wait("r")
    assert doc["status"] == "succeeded", doc
    assert doc["files_total"] == doc["files_done"] == 3
    assert doc["bytes_done"] == sum(len(v) for v in files.values())
    for rel, data in files.items():
        assert (b / rel).read_bytes() == data
    assert not (a / "tree").exists()
    # the catalogue knows the whole new tree at once, and the moved one is gone
    [z] = api.get("/api/v1/find/z.bin").json()
    assert z["path"] == "site-b:/tree/sub/deeper/z.bin"
    # overwrite false: the target exists -> failed with 409 semantics
    (a / "o.txt").write_text("new")
    (b / "o.txt").write_text("old")
    api.post("/api/v1/copy", {"id": "o", "from": "site-a:/o.txt", "to": "site-b:/o.txt",
                              "overwrite": False})
    doc = api.wait("o")
    assert doc["status"] == "failed" and doc["error"]["status"] == 409
    assert (b / "o.txt").read_text() == "old"
    # same-site move is a rename
    api.post("/api/v1/copy", {"id": "m", "from": "site-a:/o.txt", "to": "site-a:/p.txt",
                              "move": True})
    assert api.wait("m")["status"] == "succeeded"
    assert (a / "p.txt").read_text() == "new" and not (a / "o.txt").exists()
    # same-site copy uses the server-side path and is verified
    api.post("/api/v1/copy", {"id": "sc", "from": "site-a:/p.txt", "to": "site-a:/q.txt"})
    doc = api.wait("sc")
    assert doc["checksum"]["sha256"] == hashlib.sha256(b"new").hexdigest()
    # a missing source fails cleanly
    api.post("/api/v1/copy", {"id": "nf", "from": "site-a:/nope", "to": "site-b:/nope"})
    assert api.wait("nf")["error"]["code"] == "not_found"


def test_expected_checksum(server, config, api):
    (site_dir(config, "site-a") / "e").write_bytes(b"data")
    good = hashlib.sha256(b"data").hexdigest()
    api.post("/api/v1/copy", {"id": "e1", "from": "site-a:/e", "to": "site-b:/e",
                              "checksum": {"sha256": good}})
    assert api.wait("e1")["status"] == "succeeded"
    api.post("/api/v1/copy", {"id": "e2", "from": "site-a:/e", "to": "site-b:/e2",
                              "checksum": {"sha256": "0" * 64}})
    doc = api.wait("e2")
    assert doc["status"] == "failed" and doc["error"]["code"] == "checksum_mismatch"
    assert not (site_dir(config, "site-b") / "e2").exists()
    api.post("/api/v1/copy", {"id": "e3", "from": "site-a:/e", "to": "site-b:/e3",
                              "checksum": "md5"})
    assert api.wait("e3")["checksum"] == {"md5": hashlib.md5(b"data").hexdigest()}


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_json"),
    (b"[]", 400, "invalid_body"),
    (b"42", 400, "invalid_body"),
    (b'{"from": "site-a:/x"}', 400, "missing_field"),
    (b'{"from": "site-a:/x", "to": 5}', 400, "invalid_field"),
    (b'{"from": "nosuch:/x", "to": "site-b:/x"}', 422, "unknown_site"),
    (b'{"from": "site-a:/../etc/passwd", "to": "site-b:/x"}', 400, "bad_path"),
    (b'{"from": "site-a:/a\\\\b", "to": "site-b:/x"}', 400, "bad_path"),
    (b'{"from": "site-a/x", "to": "site-b:/x"}', 400, "bad_path"),
    (b'{"from": "site-a:/x", "to": "site-b:/x", "bogus": 1}', 400, "invalid_field"),
    (b'{"from": "site-a:/x", "to": "site-b:/x", "move": "yes"}', 400, "invalid_field"),
    (b'{"from": "site-a:/x", "to": "site-a:/x"}', 422, "same_path"),
    (b'{"id": "bad id!", "from": "site-a:/x", "to": "site-b:/x"}', 400, "invalid_field"),
    (b'{"from": "site-a:/x", "to": "site-b:/x", "webhook": "ftp://h/x"}', 422,
     "unsafe_webhook"),
    (b'{"from": "site-a:/x", "to": "site-b:/x", "webhook": {"url": "http://127.0.0.1/",'
     b' "method": "DELETE"}}', 400, "invalid_field"),
])
def test_bad_requests(server, api, body, status, code):
    r = api.post("/api/v1/copy", data=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.headers["Content-Type"].startswith("application/json")


def test_bad_requests_other(server, api):
    r = api.post("/api/v1/copy", data=b"[" + b'"x",' * 400_000 + b'"x"]')
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = Api(server.url, auth=None).get("/api/v1/copy")
    assert r.status_code == 401 and "Basic" in r.headers["WWW-Authenticate"]
    r = Api(server.url, auth=("alice", "wrong")).get("/api/v1/copy")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = Api(server.url, auth=None, headers={"x-access-token": "not.a.jwt"}).get("/api/v1/list")
    assert r.status_code == 401
    assert api.get("/api/v1/copy/nope").status_code == 404
    assert api.delete("/api/v1/copy/nope").status_code == 404
    assert api.get("/api/v1/copy?status=weird").status_code == 400
    assert api.get("/api/v1/copy?limit=0").status_code == 400
    assert api.get("/api/v1/copy?cursor=!!!").status_code == 400
    assert api.get("/api/v1/list?limit=abc").status_code == 400
    assert api.get("/api/v1/nowhere").status_code == 404
    r = api.s.put(server.url + "/api/v1/copy", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_permissions(tmp_path, staging_keys, blockbuster, blocking_log):
    cfg = make_config(tmp_path, staging_keys[1], permissions=[
        {"user": "alice", "path": "/site-b", "access": "read"}])
    srv = start_server(cfg)
    try:
        api = Api(srv.url)
        (site_dir(cfg, "site-a") / "p").write_text("p")
        r = api.post("/api/v1/copy", {"from": "site-a:/p", "to": "site-b:/p"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert api.post("/api/v1/copy", {"from": "site-b:/p", "to": "site-a:/p",
                                         "move": True}).status_code == 403
    finally:
        srv.stop()


def test_per_site_concurrency(tmp_path, staging_keys, blockbuster, blocking_log):
    """per_site_concurrency: 1 -> copies touching a site never overlap."""
    cfg = make_config(tmp_path, staging_keys[1], transfers={
        "workers": 4, "per_site_concurrency": 1, "retries": 1})
    srv = start_server(cfg)
    try:
        api = Api(srv.url)
        a = site_dir(cfg, "site-a")
        for i in range(3):
            with open(a / f"s{i}", "wb") as fh:
                fh.truncate(192 * 1024 * 1024)
        api.post("/api/v1/copy", [{"id": f"p{i}", "from": f"site-a:/s{i}",
                                   "to": f"site-b:/s{i}"} for i in range(3)])
        overlap = 0
        end = time.time() + 60
        while True:
            jobs = api.get("/api/v1/copy").json()
            busy = [j for j in jobs if j["status"] == "running" and j["bytes_done"] > 0]
            overlap = max(overlap, len(busy))
            if all(j["status"] == "succeeded" for j in jobs):
                break
            assert time.time() < end and not [j for j in jobs if j["status"] == "failed"]
            time.sleep(0.01)
        # sampled: a fast machine may finish a copy between two polls, so 0 is possible;
        # two copies seen moving data at once would break the limit
        assert overlap <= 1
    finally:
        srv.stop()


def test_unicode_and_spaces(server, config, api):
    a = site_dir(config, "site-a")
    (a / "données d'été").mkdir()
    (a / "données d'été" / "çà et là.txt").write_text("ünïcödé")
    r = api.post("/api/v1/copy", {"id": "u", "from": "site-a:/données d'été",
                                  "to": "site-b:/été 2026", "recursive": True})
    assert r.status_code == 202, r.text
    assert api.wait("u")["status"] == "succeeded"
    assert (site_dir(config, "site-b") / "été 2026" / "çà et là.txt").read_text() == "ünïcödé"
    [e] = api.get("/api/v1/find/çà et là.txt?site=site-b").json()
    assert e["path"] == "site-b:/été 2026/çà et là.txt"
    assert e["url"].endswith("/site-b/%C3%A9t%C3%A9%202026/%C3%A7%C3%A0%20et%20l%C3%A0.txt")


def test_token_scopes(server, config, api, staging_keys):
    """A WLCG-scoped token may only read and write where its scopes say."""
    from fedgate.auth import mint_token

    a = site_dir(config, "site-a")
    (a / "in").mkdir()
    (a / "in" / "s.txt").write_text("s")
    (site_dir(config, "site-b") / "in").mkdir()
    api.post("/api/v1/refresh")
    token = mint_token(staging_keys[0], "ee@process-project.eu",
                       scope="storage.read:/site-a/in storage.modify:/site-b/in")
    ee = Api(server.url, auth=None, headers={"Authorization": f"Bearer {token}"})
    assert ee.post("/api/v1/copy", {"from": "site-a:/in/s.txt",
                                    "to": "site-b:/elsewhere.txt"}).status_code == 403
    r = ee.post("/api/v1/copy", {"id": "sc", "from": "site-a:/in/s.txt",
                                 "to": "site-b:/in/s.txt"})
    assert r.status_code == 202
    assert ee.wait("sc")["status"] == "succeeded"
    # what the token cannot read is not listed
    paths = {e["path"] for entries in ee.get("/api/v1/list").json().values() for e in entries}
    assert paths == {"site-a:/in", "site-a:/in/s.txt"}
    assert api.get("/api/v1/copy/sc").status_code == 404  # alice does not see ee's jobs
