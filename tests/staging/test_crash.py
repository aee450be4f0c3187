"""The service process killed with SIGKILL in the middle of a large copy and
started again: the job ends succeeded exactly once, the target is complete and
verified, and the receiver sees one distinct webhook-id."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.staging.conftest import PASSWORD, free_port, make_doc

SIZE = int(os.environ.get("FEDGATE_TEST_CRASH_SIZE", str(1024 ** 3)))  # 1 GiB


def _spawn(module: str, cfg_path: Path, log: Path, *extra: str,
           role: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "FEDGATE_JOB_LEASE_S": "2"}
    cmd = [sys.executable, "-m", module, *([role] if role else []), "--config", str(cfg_path)]
    return subprocess.Popen([*cmd, *extra],
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))


def _start(cfg_path: Path, url: str, log: Path,
           role: str | None = None) -> subprocess.Popen[bytes]:
    """``python -m staging`` (API and workers), or the fedgate CLI's ``role``."""
    proc = (_spawn("fedgate.cli", cfg_path, log, role=role) if role
            else _spawn("staging", cfg_path, log))
    end = time.time() + 30
    while time.time() < end:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"staging exited: {log.read_text()}")
        time.sleep(0.05)
    raise AssertionError("staging did not start")


def test_sigkill_mid_copy(tmp_path, staging_keys, receiver):
    port = free_port()
    doc = make_doc(tmp_path, staging_keys[1], port)
    doc["data_dir"] = str(tmp_path / "data")
    cfg_path = tmp_path / "fedgate.json"
    cfg_path.write_text(json.dumps(doc))
    url = f"http://127.0.0.1:{port}"
    src = tmp_path / "sites" / "site-a" / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as fh:
        block = os.urandom(16 * 1024 * 1024)
        for i in range(SIZE // len(block)):
            chunk = block[:8] + i.to_bytes(8, "big") + block[16:]  # every block differs
            h.update(chunk)
            fh.write(chunk)
    src_sum = h.hexdigest()
    log = tmp_path / "staging.log"
    auth = ("alice", PASSWORD)
    proc = _start(cfg_path, url, log)
    try:
        r = requests.post(url + "/api/v1/copy", auth=auth, timeout=10, data=json.dumps(
            [{"id": "crash-1", "from": "site-a:/big.bin", "to": "site-b:/big.bin",
              "webhook": receiver.url}]))
        assert r.status_code == 202, r.text
        end = time.time() + 60
        while True:
            st = requests.get(url + "/api/v1/copy/crash-1", auth=auth, timeout=10).json()
            if st["bytes_done"] > SIZE // 8:
                break
            assert st["status"] in ("queued", "running"), st
            assert time.time() < end, st
            time.sleep(0.02)
        assert st["bytes_done"] < SIZE, "copy finished before the kill; use a larger size"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert not (tmp_path / "sites" / "site-b" / "big.bin").exists()
        proc = _start(cfg_path, url, log)
        end = time.time() + 120
        while True:
            st = requests.get(url + "/api/v1/copy/crash-1", auth=auth, timeout=10).json()
            if st["status"] in ("succeeded", "failed", "cancelled"):
                break
            assert time.time() < end, st
            time.sleep(0.1)
        assert st["status"] == "succeeded", st
        assert st["attempts"] >= 2
        dst = tmp_path / "sites" / "site-b" / "big.bin"
        assert st["checksum"]["sha256"] == src_sum
        h2 = hashlib.sha256()
        with open(dst, "rb") as fh:
            while chunk := fh.read(16 << 20):
                h2.update(chunk)
        assert h2.hexdigest() == src_sum and dst.stat().st_size == SIZE
        receiver.wait_for(1)
        time.sleep(1.5)  # a second (duplicate) event would arrive by now
        ids = {req["headers"]["webhook-id"] for req in receiver.requests}
        assert len(ids) == 1 and len(receiver.requests) == 1
        assert json.loads(receiver.requests[0]["body"])["type"] == "copy.succeeded"
        st = requests.get(url + "/api/v1/copy/crash-1", auth=auth, timeout=10).json()
        assert len(st["webhook"]["deliveries"]) == 1
        jobs = requests.get(url + "/api/v1/copy", auth=auth, timeout=10).json()
        assert [j["id"] for j in jobs] == ["crash-1"]
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_api_and_two_worker_processes(tmp_path, staging_keys, receiver):
    """serve-staging without workers + two `fedgate worker` processes on one store:
    every job runs once, every webhook is sent once; a killed worker's job is
    taken over by the other."""
    port = free_port()
    doc = make_doc(tmp_path, staging_keys[1], port)
    doc["data_dir"] = str(tmp_path / "data")
    cfg_path = tmp_path / "fedgate.json"
    cfg_path.write_text(json.dumps(doc))
    url = f"http://127.0.0.1:{port}"
    a = tmp_path / "sites" / "site-a"
    for i in range(12):
        (a / f"f{i}").write_bytes(os.urandom(256 * 1024))
    with open(a / "slow.bin", "wb") as fh:
        fh.truncate(768 * 1024 ** 2)  # sparse; long enough to kill its worker mid-way
    log = tmp_path / "procs.log"
    api = _start(cfg_path, url, log, role="serve-staging")
    workers = [_spawn("fedgate.cli", cfg_path, log, role="worker") for _ in range(2)]
    auth = ("alice", PASSWORD)
    try:
        body = [{"id": "slow", "from": "site-a:/slow.bin", "to": "site-b:/slow.bin",
                 "webhook": receiver.url}]
        body += [{"id": f"j{i}", "from": f"site-a:/f{i}", "to": f"site-b:/f{i}",
                  "webhook": receiver.url} for i in range(12)]
        assert requests.post(url + "/api/v1/copy", auth=auth, data=json.dumps(body),
                             timeout=10).status_code == 202
        end = time.time() + 30
        while requests.get(url + "/api/v1/copy/slow", auth=auth,
                           timeout=10).json()["bytes_done"] == 0:
            assert time.time() < end
            time.sleep(0.05)
        workers[0].kill()  # one of them holds "slow" (or not: then nothing changes)
        workers[0].wait(10)
        end = time.time() + 90
        while True:
            jobs = requests.get(url + "/api/v1/copy?limit=100", auth=auth, timeout=10).json()
            if all(j["status"] == "succeeded" for j in jobs):
                break
            assert not [j for j in jobs if j["status"] in ("failed", "cancelled")], jobs
            assert time.time() < end, [(j["id"], j["status"]) for j in jobs]
            time.sleep(0.2)
        # a cancel answered by the API process stops a copy run by a worker process
        # (a source far too large to finish first: 16 GiB, sparse)
        with open(a / "huge.bin", "wb") as fh:
            fh.truncate(16 * 1024 ** 3)
        assert requests.post(url + "/api/v1/copy", auth=auth, timeout=10, data=json.dumps(
            {"id": "c", "from": "site-a:/huge.bin", "to": "site-b:/c.bin",
             "webhook": receiver.url})).status_code == 202
        end = time.time() + 30
        while requests.get(url + "/api/v1/copy/c", auth=auth,
                           timeout=10).json()["bytes_done"] == 0:
            assert time.time() < end
            time.sleep(0.02)
        t0 = time.time()
        r = requests.delete(url + "/api/v1/copy/c", auth=auth, timeout=10)
        assert r.status_code == 202 and r.json()["cancel_requested"]
        while (st := requests.get(url + "/api/v1/copy/c", auth=auth,
                                  timeout=10).json())["status"] == "running":
            assert time.time() - t0 < 5
            time.sleep(0.05)
        assert st["status"] == "cancelled"
        assert not (tmp_path / "sites" / "site-b" / "c.bin").exists()
        hooks = receiver.wait_for(14)
        time.sleep(1)
        ids = [json.loads(h["body"])["id"] for h in receiver.requests]
        assert sorted(ids) == sorted(["c", "slow"] + [f"j{i}" for i in range(12)])
        for i in range(12):
            assert (tmp_path / "sites" / "site-b" / f"f{i}").read_bytes() == (
                a / f"f{i}").read_bytes()
        assert len(hooks) == 14
    finally:
        for p in [api, *workers]:
            _stop(p)
