"""Staging service benchmark: prints a table of the figures the issue asks for.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_staging.py [--size-mib 1024]

- submit latency of 100 copy requests (p50/p99 per request, one at a time)
- copy rate of one large file between two local sites vs the slower of a raw
  source read and a raw target write (same adaptors, same block size)
- find by name over a 100,000-entry catalogue (p50/p99)
- delay from a job's end (``finished_at``) to its webhook arriving
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptors.base import BLOCK_SIZE, iter_chunks
from adaptors.local import LocalAdaptor
from fedgate.auth import hash_password
from fedgate.cli import tune_malloc
from fedgate.config import build_config
from fedgate.store.sqlite import SQLiteStore

PASSWORD = "bench-password"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from staging.app import start_site

        asyncio.set_event_loop(self.loop)
        runner = self.loop.run_until_complete(start_site(self.config))
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> Server:
        self.thread.start()
        self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


class Hook(BaseHTTPRequestHandler):
    arrivals: list[tuple[float, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        Hook.arrivals.append((time.time(), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--catalogue", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tune_malloc()  # as every fedgate process does (fedgate.cli.main)
    os.environ.setdefault("FEDGATE_JOB_LEASE_S", "30")
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-staging-") as tmp:
        root = Path(tmp)
        for s in ("site-a", "site-b"):
            (root / s).mkdir()
        port = free_port()
        doc = {"name": "bench", "listen": {"staging": f"127.0.0.1:{port}"},
               "state": f"sqlite:///{root / 'state.db'}",
               "sites": [{"name": s, "type": "local", "path": str(root / s)}
                         for s in ("site-a", "site-b")],
               "users": [{"name": "u", "password_hash": hash_password(PASSWORD)}],
               "webhooks": {"secret": "s", "allow_private_addresses": True},
               "catalogue": {"refresh_interval_s": 3600}}
        config = build_config(doc, data_dir=root / "data")
        url = f"http://127.0.0.1:{port}"
        hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        hook_url = f"http://127.0.0.1:{hook.server_address[1]}/h"
        s = requests.Session()
        s.auth = ("u", PASSWORD)
        with Server(config):
            # -- 1. submit latency ---------------------------------------------------
            (root / "site-a" / "small").write_bytes(b"x" * 1024)
            s.get(url + "/api/v1/copy")  # warm the password cache
            lat = []
            for i in range(100):
                body = json.dumps({"id": f"s{i}", "from": "site-a:/small",
                                   "to": f"site-b:/small-{i}"})
                t0 = time.perf_counter()
                r = s.post(url + "/api/v1/copy", data=body)
                lat.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 202, r.text
            rows.append(("submit 100 copies (per request)",
                         f"p50 {pct(lat, 50):.1f} ms / p99 {pct(lat, 99):.1f} ms", "p99 < 50 ms",
                         "ok" if pct(lat, 99) < 50 else "MISSED"))
            while s.get(url + "/api/v1/copy?status=succeeded&limit=1000").json().__len__() < 100:
                time.sleep(0.1)

            # -- 2. copy rate vs raw read / raw write ----------------------------------------
            size = args.size_mib * 1024 * 1024
            src = root / "site-a" / "big.bin"
            block = os.urandom(BLOCK_SIZE)
            with open(src, "wb") as fh:
                for i in range(size // BLOCK_SIZE):
                    fh.write(i.to_bytes(8, "big") + block[8:])
            a = LocalAdaptor("site-a", {"path": str(root / "site-a")}, None)
            b = LocalAdaptor("site-b", {"path": str(root / "site-b")}, None)
            t0 = time.perf_counter()
            for _ in iter_chunks(a.open_read("/big.bin")):
                pass
            read_rate = size / (time.perf_counter() - t0)
            def ts(v: str) -> float:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()

            writes, copies, reported = [], [], []
            for k in range(args.rounds):  # interleaved, medians: the disk is noisy
                t0 = time.perf_counter()
                w = b.open_write("/raw.bin", size_hint=size)
                for i in range(size // BLOCK_SIZE):
                    w.write(i.to_bytes(8, "big") + block[8:])
                w.commit()
                writes.append(size / (time.perf_counter() - t0))
                (root / "site-b" / "raw.bin").unlink()
                Hook.arrivals.clear()
                s.post(url + "/api/v1/copy", data=json.dumps(
                    {"id": f"big{k}", "from": "site-a:/big.bin", "to": "site-b:/big.bin",
                     "webhook": hook_url}))
                while (job := s.get(url + f"/api/v1/copy/big{k}").json())["status"] not in (
                        "succeeded", "failed", "cancelled"):
                    time.sleep(0.05)
                assert job["status"] == "succeeded", job
                copies.append(size / (ts(job["finished_at"]) - ts(job["started_at"])))
                reported.append(job["rate_bps"])
                if k < args.rounds - 1:
                    (root / "site-b" / "big.bin").unlink()
            write_rate = statistics.median(writes)
            copy_rate = statistics.median(copies)
            ref = min(read_rate, write_rate)
            mib = 1024 * 1024
            rows.append((f"raw read / raw write ({args.size_mib} MiB)",
                         f"{read_rate / mib:.0f} / {write_rate / mib:.0f} MiB/s", "", ""))
            rows.append((f"copy, sha256 + read-back verify (median of {args.rounds})",
                         f"{copy_rate / mib:.0f} MiB/s = {copy_rate / ref:.2f}x slower end",
                         ">= 0.8x", "ok" if copy_rate / ref >= 0.8 else "MISSED"))
            rows.append(("job rate_bps as reported (median)",
                         f"{statistics.median(reported) / mib:.0f} MiB/s", "", ""))
            want = hashlib.sha256(src.read_bytes()).hexdigest()
            assert job["checksum"]["sha256"] == want
            # -- 4. webhook delay ---------------------------------------------------------
            end = time.time() + 10
            while not Hook.arrivals and time.time() < end:
                time.sleep(0.01)
            delay = Hook.arrivals[0][0] - ts(job["finished_at"])
            rows.append(("webhook after job end", f"{delay * 1000:.0f} ms", "< 1 s",
                         "ok" if delay < 1 else "MISSED"))
            src.unlink()
            (root / "site-b" / "big.bin").unlink()

        # -- 3. find over a 100k catalogue ---------------------------------------------------
        store = SQLiteStore(root / "state.db")
        n = args.catalogue
        batch = []
        for i in range(n):
            batch.append({"path": f"/d{i % 500}/file-{i}.dat", "basename": f"file-{i}.dat",
                          "is_dir": False, "size": i, "mtime": time.time(), "checksum": None})
            if len(batch) == 10_000:
                store.catalogue_upsert("synthetic", batch)
                batch = []
        if batch:
            store.catalogue_upsert("synthetic", batch)
        store.close()
        with Server(config):
            lat = []
            for i in range(200):
                name = f"file-{(i * 7919) % n}.dat"
                t0 = time.perf_counter()
                r = s.get(url + f"/api/v1/find/{name}")
                lat.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
            t0 = time.perf_counter()
            r = s.get(url + "/api/v1/find?glob=file-99*.dat")
            glob_ms = (time.perf_counter() - t0) * 1000
            assert r.status_code == 200
            rows.append((f"find by name, {n:,} entries",
                         f"p50 {pct(lat, 50):.1f} ms / p99 {pct(lat, 99):.1f} ms", "< 50 ms",
                         "ok" if pct(lat, 99) < 50 else "MISSED"))
            rows.append((f"find by glob, {n:,} entries", f"{glob_ms:.1f} ms", "", ""))
        hook.shutdown()
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measure':{w0}}  {'result':{w1}}  {'target':12} verdict")
    for r in rows:
        print(f"{r[0]:{w0}}  {r[1]:{w1}}  {r[2]:12} {r[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
