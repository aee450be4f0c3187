"""Issue 7: separate roles sharing one SQLite state on one machine.
`fedgate serve-staging` + two `fedgate worker` processes; 50 copy jobs; one
worker killed with SIGKILL midway: every job ends succeeded exactly once and
verified."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import requests

from tests.staging.conftest import PASSWORD, free_port, make_doc

JOBS = 50
SIZE = 8 * 1024 * 1024
BIG = 3 * 1024 ** 3


def _role(role: str, cfg: Path, log: Path, lease_s: str = "2") -> subprocess.Popen[bytes]:
    env = {**os.environ, "FEDGATE_JOB_LEASE_S": lease_s}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "fedgate.cli", "--log-level", "info",
                                 role, "--config", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=fh)


def _wait_healthy(url: str, log: Path) -> None:
    end = time.time() + 30
    while True:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.time() < end, log.read_text()[-3000:]
        time.sleep(0.1)


def test_fifty_jobs_two_workers_one_killed(tmp_path, staging_keys, receiver):
    port = free_port()
    doc = make_doc(tmp_path, staging_keys[1], port,
                   transfers={"workers": 2, "per_site_concurrency": 8, "retries": 3})
    doc["data_dir"] = str(tmp_path / "data")
    cfg = tmp_path / "fedgate.json"
    cfg.write_text(json.dumps(doc))
    url = f"http://127.0.0.1:{port}"
    a, b = tmp_path / "sites" / "site-a", tmp_path / "sites" / "site-b"
    sums = {}
    for i in range(JOBS):
        data = os.urandom(SIZE)
        (a / f"f{i:02d}.bin").write_bytes(data)
        sums[f"f{i:02d}.bin"] = hashlib.sha256(data).hexdigest()
    log = tmp_path / "roles.log"
    staging = _role("serve-staging", cfg, log)
    workers = [_role("worker", cfg, log) for _ in range(2)]
    auth = ("alice", PASSWORD)
    try:
        _wait_healthy(url, log)
        body = [{"id": f"j{i:02d}", "from": f"site-a:/f{i:02d}.bin",
                 "to": f"site-b:/f{i:02d}.bin", "webhook": receiver.url} for i in range(JOBS)]
        r = requests.post(url + "/api/v1/copy", auth=auth, data=json.dumps(body), timeout=30)
        assert r.status_code == 202, r.text
        killed = False
        end = time.time() + 180
        while True:
            jobs = requests.get(url + "/api/v1/copy?limit=100", auth=auth, timeout=10).json()
            done = sum(j["status"] == "succeeded" for j in jobs)
            running = sum(j["status"] == "running" for j in jobs)
            if not killed and done >= 10 and running:
                workers[0].kill()  # SIGKILL, midway, while it holds jobs
                workers[0].wait(10)
                killed = True
            if done == JOBS:
                break
            assert not [j for j in jobs if j["status"] in ("failed", "cancelled")], jobs
            assert time.time() < end, [(j["id"], j["status"]) for j in jobs]
            time.sleep(0.1)
        assert killed, "the batch finished before a worker could be killed"
        assert len(jobs) == JOBS
        for name, digest in sums.items():
            assert hashlib.sha256((b / name).read_bytes()).hexdigest() == digest, name
        for j in jobs:
            assert j["checksum"]["sha256"] == sums[j["from"].split("/")[-1]]
        hooks = receiver.wait_for(JOBS, timeout=60)
        time.sleep(1)
        ids: dict[str, set[str]] = defaultdict(set)
        for h in receiver.requests:
            event = json.loads(h["body"])
            assert event["type"] == "copy.succeeded"
            ids[event["id"]].add(h["headers"]["webhook-id"])
        assert len(hooks) >= JOBS
        assert set(ids) == {f"j{i:02d}" for i in range(JOBS)}
        assert all(len(v) == 1 for v in ids.values()), "a job was reported done twice"
    finally:
        for p in [staging, *workers]:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_worker_sigterm_releases_its_job(tmp_path, staging_keys):
    """SIGTERM: the worker stops its transfer at a block boundary, gives the job
    back (lease released) and exits well within a pod's grace period; the next
    worker takes the job over at once and finishes it."""
    port = free_port()
    doc = make_doc(tmp_path, staging_keys[1], port)
    doc["data_dir"] = str(tmp_path / "data")
    cfg = tmp_path / "fedgate.json"
    cfg.write_text(json.dumps(doc))
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "sites" / "site-a" / "big.bin", "wb") as fh:
        fh.truncate(BIG)  # sparse; long enough that SIGTERM lands mid-copy
    log = tmp_path / "roles.log"
    # a long lease: the takeover below must come from the release, not from expiry
    staging = _role("serve-staging", cfg, log, lease_s="600")
    worker = _role("worker", cfg, log, lease_s="600")
    auth = ("alice", PASSWORD)
    procs = [staging, worker]
    try:
        _wait_healthy(url, log)
        assert requests.post(url + "/api/v1/copy", auth=auth, timeout=10, data=json.dumps(
            {"id": "big", "from": "site-a:/big.bin", "to": "site-b:/big.bin"})
        ).status_code == 202
        end = time.time() + 60
        while requests.get(url + "/api/v1/copy/big", auth=auth, timeout=10
                           ).json()["bytes_done"] == 0:
            assert time.time() < end
            time.sleep(0.05)
        t0 = time.time()
        worker.terminate()
        try:
            rc = worker.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, f"worker did not stop cleanly ({rc}):\n{log.read_text()[-6000:]}"
        assert time.time() - t0 < 45, "worker took longer than its shutdown budget"
        second = _role("worker", cfg, log, lease_s="600")
        procs.append(second)
        end = time.time() + 120
        while (st := requests.get(url + "/api/v1/copy/big", auth=auth, timeout=10).json()
               )["status"] != "succeeded":
            assert st["status"] in ("queued", "running") and time.time() < end, st
            time.sleep(0.2)
        assert st["attempts"] >= 1 and (tmp_path / "sites" / "site-b" / "big.bin"
                                        ).stat().st_size == BIG
        staging.terminate()
        assert staging.wait(20) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
