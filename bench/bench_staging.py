"""Staging service benchmark: prints a table of the figures the issue asks for.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_staging.py [--size-mib 1024]
        [--rounds 3] [--pairs local-local,sftp-local,local-sftp,s3-local,...]

- submit latency of 100 copy requests (p50/p99 per request, one at a time)
- copy rate of one large file through the staging service (the transfer
  engine, default sha256 checksum + verification of the target) vs the slower
  of a raw source read and a raw target write, measured in the same run with
  adaptors built from the same site options and the same block size, for each
  pair in ``--pairs`` (default: every pair whose server can run here):
  local-local, and sftp / s3 / gridftp to and from a local site, against real
  servers on loopback (OpenSSH sshd, SeaweedFS, globus-gridftp-server; started
  with the tests' helpers).  Rounds are interleaved (each pair's raw read, raw
  write and job in turn), figures are medians
- find by name over a 100,000-entry catalogue (p50/p99)
- delay from a job's end (``finished_at``) to its webhook arriving
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptors import create_adaptor
from adaptors.base import BLOCK_SIZE, Adaptor, AdaptorContext, Capability, iter_chunks
from bench.common import REMOTE_KINDS, CoresBusy, free_port, remote_missing, start_remote
from fedgate.auth import hash_password
from fedgate.cli import tune_malloc
from fedgate.config import build_config
from fedgate.store.sqlite import SQLiteStore

PASSWORD = "bench-password"


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
    arrivals: dict[str, float] = {}
    """job id -> arrival time of its first webhook"""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        Hook.arrivals.setdefault(json.loads(body)["id"], time.time())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


MiB = 1024 * 1024
LOCAL_PAIR = "local-local"
#: every pair this bench knows, in table order
ALL_PAIRS = (LOCAL_PAIR, *(p for k in REMOTE_KINDS for p in (f"{k}-local", f"local-{k}")))


@dataclass
class Pair:
    """One copy direction: source site:path -> target site:path, and its samples."""

    name: str
    src_site: str
    src: str
    dst_site: str
    dst: str
    reads: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    cores: dict[str, list[float]] = field(default_factory=dict)
    """cores busy (whole machine) during each raw read, raw write and job"""
    jobs: list[dict[str, Any]] = field(default_factory=list)
    """the final document of each round's copy job"""

    def copies(self, size: int) -> list[float]:
        """Bytes/s of each job, from its own start and end times."""
        return [size / (ts(j["finished_at"]) - ts(j["started_at"])) for j in self.jobs]


def make_pair(name: str) -> Pair:
    """``local-local`` is site-a -> site-b; ``K-local`` K:/big.bin -> site-b;
    ``local-K`` site-a:/big.bin -> K."""
    a, b = name.split("-")
    if name == LOCAL_PAIR:
        return Pair(name, "site-a", "/big.bin", "site-b", "/big.bin")
    if b == "local":
        return Pair(name, a, "/big.bin", "site-b", f"/from-{a}.bin")
    return Pair(name, "site-a", "/big.bin", b, "/copy.bin")


def pattern(size: int, block: bytes) -> Iterator[bytes]:
    """``size`` bytes in ``len(block)`` blocks, each one different (no dedup)."""
    for i in range(size // len(block)):
        yield i.to_bytes(8, "big") + block[8:]


def settle() -> None:
    """Before a timed operation: flush what earlier ones left dirty (SeaweedFS's
    volumes are on disk), so that its writeback does not land in this one."""
    os.sync()
    time.sleep(0.2)


def raw_write(adaptor: Adaptor, path: str, size: int, block: bytes) -> tuple[float, float]:
    """Bytes/s of a staged write of ``size`` bytes (open_write + write + commit),
    and the cores busy meanwhile."""
    settle()
    busy = CoresBusy()
    t0 = time.perf_counter()
    w = adaptor.open_write(path, size_hint=size)
    for chunk in pattern(size, block):
        w.write(chunk)
    w.commit()
    return size / (time.perf_counter() - t0), busy.done()


def raw_read(adaptor: Adaptor, path: str, size: int) -> tuple[float, float]:
    """Bytes/s of reading ``path`` to its end in BLOCK_SIZE blocks, and the
    cores busy meanwhile."""
    settle()
    busy = CoresBusy()
    t0 = time.perf_counter()
    n = 0
    for chunk in iter_chunks(adaptor.open_read(path), BLOCK_SIZE):
        n += len(chunk)
    assert n == size, (path, n)
    return size / (time.perf_counter() - t0), busy.done()


def ts(v: str) -> float:
    return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()


def run_job(s: requests.Session, url: str, body: dict[str, Any]
            ) -> tuple[dict[str, Any], float]:
    """Submit one copy and wait for its end: its final status document, and the
    cores busy meanwhile."""
    settle()
    busy = CoresBusy()
    r = s.post(url + "/api/v1/copy", data=json.dumps(body))
    assert r.status_code == 202, r.text
    while (job := s.get(url + f"/api/v1/copy/{body['id']}").json())["status"] not in (
            "succeeded", "failed", "cancelled"):
        time.sleep(0.05)
    return job, busy.done()


def parse_pairs(arg: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """The pairs to run and (pair, reason) of those skipped.  Asked-for pairs
    that cannot run are an error; the default is every pair that can."""
    wanted = list(ALL_PAIRS) if arg is None else [p.strip() for p in arg.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in ALL_PAIRS]
    if unknown:
        raise SystemExit(f"unknown pair(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(ALL_PAIRS)}")
    run: list[str] = []
    skipped: list[tuple[str, str]] = []
    for p in wanted:
        kind = next((k for k in p.split("-") if k != "local"), None)
        reason = remote_missing(kind) if kind else None
        if reason is None:
            run.append(p)
        elif arg is not None:
            raise SystemExit(f"cannot run {p}: {reason}")
        else:
            skipped.append((p, reason))
    return run, skipped


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--catalogue", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the local, sftp and gridftp sites keep their files (default "
                    "/dev/shm: on this VM's disk, fsync and the writeback of earlier rounds "
                    "made raw writes swing 4x); SeaweedFS and the state store stay on disk")
    ap.add_argument("--pairs", help="comma-separated copy directions, from "
                    f"{', '.join(ALL_PAIRS)} (default: all that can run here)")
    args = ap.parse_args()
    pair_names, skipped = parse_pairs(args.pairs)
    tune_malloc()  # as every fedgate process does (fedgate.cli.main)
    os.environ.setdefault("FEDGATE_JOB_LEASE_S", "30")
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-staging-") as tmp, \
            tempfile.TemporaryDirectory(prefix="bench-staging-data-", dir=args.data_dir) as dd, \
            contextlib.ExitStack() as servers:
        root, data = Path(tmp), Path(dd)
        for d in (root, data):  # the gridftp and sftp servers' accounts reach their dirs
            os.chmod(d, 0o755)
        for name in ("site-a", "site-b"):
            (data / name).mkdir()
        sites: list[dict[str, Any]] = [{"name": n, "type": "local", "path": str(data / n)}
                                       for n in ("site-a", "site-b")]
        kinds = [k for k in REMOTE_KINDS if any(k in p.split("-") for p in pair_names)]
        for kind in kinds:  # real servers on loopback, stopped when ``servers`` closes
            sites.append(start_remote(kind, root / f"srv-{kind}", servers, data=data))
        port = free_port()
        doc = {"name": "bench", "listen": {"staging": f"127.0.0.1:{port}"},
               "state": f"sqlite:///{root / 'state.db'}",
               "sites": sites,
               "users": [{"name": "u", "password_hash": hash_password(PASSWORD)}],
               "webhooks": {"secret": "s", "allow_private_addresses": True},
               "catalogue": {"refresh_interval_s": 3600}}
        config = build_config(doc, data_dir=root / "data")
        # the raw reads and writes use adaptors built from the same validated options
        # as the service's (fedgate.federation), and the same block size
        ctx = AdaptorContext(data_dir=config.data_dir)
        adaptors = {o["name"]: create_adaptor(o, ctx) for o in config.sites}
        url = f"http://127.0.0.1:{port}"
        hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=hook.serve_forever, daemon=True).start()
        hook_url = f"http://127.0.0.1:{hook.server_address[1]}/h"
        s = requests.Session()
        s.auth = ("u", PASSWORD)
        with Server(config):
            # -- 1. submit latency ---------------------------------------------------
            (data / "site-a" / "small").write_bytes(b"x" * 1024)
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

            # -- 2. copy rate vs raw read / raw write, per pair ------------------------------
            size = args.size_mib * MiB
            block = os.urandom(BLOCK_SIZE)
            want = hashlib.sha256()
            for chunk in pattern(size, block):
                want.update(chunk)
            # the sources: site-a:/big.bin for local-*, K:/big.bin for K-local
            pairs = [make_pair(n) for n in pair_names]
            for name in {p.src_site for p in pairs}:
                raw_write(adaptors[name], "/big.bin", size, block)
            for k in range(args.rounds):  # interleaved, medians: disks and servers are noisy
                for p in pairs:
                    src, dst = adaptors[p.src_site], adaptors[p.dst_site]
                    rate, cores = raw_read(src, p.src, size)
                    p.reads.append(rate)
                    p.cores.setdefault("read", []).append(cores)
                    rate, cores = raw_write(dst, "/raw.bin", size, block)
                    p.writes.append(rate)
                    p.cores.setdefault("write", []).append(cores)
                    dst.remove("/raw.bin")
                    job, cores = run_job(s, url, {"id": f"{p.name}-{k}", "webhook": hook_url,
                                           "from": f"{p.src_site}:{p.src}",
                                           "to": f"{p.dst_site}:{p.dst}"})
                    assert job["status"] == "succeeded", job
                    p.cores.setdefault("copy", []).append(cores)
                    assert job["checksum"]["sha256"] == want.hexdigest(), job
                    p.jobs.append(job)
                    dst.remove(p.dst)
            for p in pairs:
                read_rate, write_rate = statistics.median(p.reads), statistics.median(p.writes)
                copies = p.copies(size)
                copy_rate = statistics.median(copies)
                ratio = copy_rate / min(read_rate, write_rate)
                busy = {k: statistics.median(v) for k, v in p.cores.items()}
                target = adaptors[p.dst_site]
                verify = ("server checksum" if Capability.CHECKSUM in target.capabilities
                          else "read-back verify")
                rows.append((f"{p.name}: raw read / raw write ({args.size_mib} MiB)",
                             f"{read_rate / MiB:.0f} / {write_rate / MiB:.0f} MiB/s, "
                             f"{busy['read']:.1f} / {busy['write']:.1f} cores", "", ""))
                rows.append((f"{p.name}: copy job, sha256 + {verify} "
                             f"(median of {args.rounds})",
                             f"copy = {copy_rate / MiB:.0f} MiB/s = {ratio:.2f}x slower end, "
                             f"{busy['copy']:.1f} cores",
                             ">= 0.8x", "ok" if ratio >= 0.8 else "MISSED"))
                print(f"{p.name} rounds MiB/s: read "
                      + " ".join(f"{x / MiB:.0f}" for x in p.reads) + "; write "
                      + " ".join(f"{x / MiB:.0f}" for x in p.writes) + "; copy "
                      + " ".join(f"{x / MiB:.0f}" for x in copies) + "; rate_bps "
                      + " ".join(f"{j['rate_bps'] / MiB:.0f}" for j in p.jobs), file=sys.stderr)
            for name, reason in skipped:
                rows.append((f"{name}: skipped", reason, "", ""))
            # -- 4. webhook delay ---------------------------------------------------------
            jobs = [j for p in pairs for j in p.jobs]
            end = time.time() + 10
            while any(j["id"] not in Hook.arrivals for j in jobs) and time.time() < end:
                time.sleep(0.01)
            delays = [Hook.arrivals.get(j["id"], float("inf")) - ts(j["finished_at"])
                      for j in jobs]
            if delays:
                rows.append((f"webhook after job end ({len(delays)} jobs)",
                             f"p50 {statistics.median(delays) * 1000:.0f} ms / "
                             f"max {max(delays) * 1000:.0f} ms", "< 1 s",
                             "ok" if max(delays) < 1 else "MISSED"))
            for p in pairs:
                with contextlib.suppress(Exception):
                    adaptors[p.src_site].remove(p.src)
            for a in adaptors.values():
                a.close()

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
    w0 = max(len(row[0]) for row in rows)
    w1 = max(len(row[1]) for row in rows)
    print(f"{'measure':{w0}}  {'result':{w1}}  {'target':12} verdict")
    for row in rows:
        print(f"{row[0]:{w0}}  {row[1]:{w1}}  {row[2]:12} {row[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
