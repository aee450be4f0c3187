"""GridFTP adaptor vs globus-url-copy on the same loopback servers.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_gridftp.py [--size-mib 1024] [--runs 3]
                                                          [--files 10000] [--streams 4]

Starts two real globus-gridftp-servers (ftp:// with a password, as the tests
do; ``--gsi`` adds rows for a GSI pair) and prints one table: GET and PUT of a
file through the adaptor vs ``globus-url-copy``, a third-party copy server to
server through ``copy_from`` vs ``globus-url-copy`` between the two servers
(with ADLER32 verification on both sides, then without), and a listing of a
folder of ``--files`` files.  Figures are medians; the two contenders run
alternately so that load from other processes hits both alike.  Server data
lives in /dev/shm (disk writeback made timings swing 3x).

Notes: globus-url-copy runs with ``-nodcau`` on GSI, as gfal2 does by default.
gfal2 opens about four new control connections per server-to-server copy
(its session cache hands one host's cached session to the other), which on
GSI costs a handshake each: a fixed ~1-1.5 s per gsiftp copy on a loaded
2-core machine that globus-url-copy does not pay.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptors import create_adaptor
from adaptors.base import AdaptorContext
from bench.common import tmpfs_dir
from tests.servers.gridftp import GridFTPServer, make_pki, start_server

GUC = shutil.which("globus-url-copy") or "globus-url-copy"


def paired(fa: Callable[[], object], fb: Callable[[], object], runs: int,
           setup: Callable[[], object] | None = None) -> tuple[float, float]:
    """Median times of two contenders run alternately (A B, B A, ...), so that
    load from other processes on the machine hits both alike."""
    ta: list[float] = []
    tb: list[float] = []
    for i in range(runs):
        order = [(fa, ta), (fb, tb)] if i % 2 == 0 else [(fb, tb), (fa, ta)]
        for fn, acc in order:
            if setup is not None:
                setup()
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def guc_url(srv: GridFTPServer, path: str) -> str:
    if srv.scheme == "ftp":
        return f"ftp://{srv.user}:{srv.password}@127.0.0.1:{srv.port}{path}"
    return f"{srv.base_url}{path}"


def guc(env: dict[str, str], *args: str) -> None:
    # gfal2 runs GSI without data-channel authentication (its DCAU=false), so
    # globus-url-copy does too, for a like-for-like comparison
    extra = ["-nodcau"] if any(a.startswith("gsiftp://") for a in args) else []
    subprocess.run([GUC, *extra, *args], check=True, env=env, stdout=subprocess.DEVNULL)


def bench_pair(label: str, a: GridFTPServer, b: GridFTPServer, env: dict[str, str],
               size: int, runs: int, files: int, streams: int, shm: Path) -> list[tuple]:
    ctx = AdaptorContext(data_dir=shm)
    src = shm / "src.bin"
    fa, fb = a.new_folder(), b.new_folder()
    site_a = a.site("a", fa)
    site_b = b.site("b", fb)
    site_a["parallel_streams"] = site_b["parallel_streams"] = streams
    ad_a = create_adaptor(site_a, ctx)
    ad_b = create_adaptor(site_b, ctx)
    block = os.urandom(4 << 20)
    with open(src, "wb") as fh:
        for _ in range(size // len(block)):
            fh.write(block)
    mib = size / (1 << 20)
    rows = []

    # PUT
    def put() -> None:
        w = ad_a.open_write("/put.bin", size_hint=size)
        for _ in range(size // len(block)):
            w.write(block)
        w.commit()

    t_put, t_guc_put = paired(
        put, lambda: guc(env, f"file://{src}", guc_url(a, f"{fa}/guc-put.bin")), runs)
    rows.append((label, f"PUT {mib:.0f} MiB", t_put, t_guc_put, t_guc_put / t_put))

    # GET
    def get() -> None:
        r = ad_a.open_read("/put.bin")
        try:
            while r.read(4 << 20):
                pass
        finally:
            r.close()

    t_get, t_guc_get = paired(
        get, lambda: guc(env, guc_url(a, f"{fa}/put.bin"), "file:///dev/null"), runs)
    rows.append((label, f"GET {mib:.0f} MiB", t_get, t_guc_get, t_guc_get / t_get))

    # third-party copy a -> b, verified by ADLER32 (both sides), then unverified
    def rm_b() -> None:
        for n in ("tpc.bin", "guc-tpc.bin"):
            (fb / n).unlink(missing_ok=True)

    src_url, dst_url = guc_url(a, f"{fa}/put.bin"), guc_url(b, f"{fb}/guc-tpc.bin")
    t_tpc, t_guc_tpc = paired(
        lambda: ad_b.copy_from(ad_a, "/put.bin", "/tpc.bin"),
        lambda: guc(env, "-p", str(streams), "-verify-checksum", "-checksum-alg", "ADLER32",
                    src_url, dst_url), runs, rm_b)
    rows.append((label, f"3rd-party {mib:.0f} MiB adler32", t_tpc, t_guc_tpc,
                 t_guc_tpc / t_tpc))
    # a staging job a -> b through the transfer engine (the path a worker runs):
    # the default job checksum (sha256), verified by both servers during the copy
    t_job, t_guc_job = paired(
        lambda: staging_job(ad_a, ad_b, shm),
        lambda: guc(env, "-p", str(streams), "-verify-checksum", "-checksum-alg", "SHA256",
                    src_url, dst_url), runs, rm_b)
    rows.append((label, f"staging job {mib:.0f} MiB sha256", t_job, t_guc_job,
                 t_guc_job / t_job))
    ad_b.copy_checksum = ""
    t_tpc, t_guc_tpc = paired(lambda: ad_b.copy_from(ad_a, "/put.bin", "/tpc.bin"),
                              lambda: guc(env, "-p", str(streams), src_url, dst_url), runs, rm_b)
    rows.append((label, f"3rd-party {mib:.0f} MiB no cksum", t_tpc, t_guc_tpc,
                 t_guc_tpc / t_tpc))

    # listing
    d = fa / "many"
    d.mkdir()
    for i in range(files):
        (d / f"file-{i:05d}.dat").write_bytes(b"")
    for p in [d, *d.iterdir()]:
        os.chown(p, a.account.pw_uid, a.account.pw_gid)
    n = len(ad_a.list("/many"))
    assert n == files, n
    t_list, t_guc_list = paired(lambda: ad_a.list("/many"),
                                lambda: guc(env, "-list", guc_url(a, f"{fa}/many/")), runs)
    rows.append((label, f"list {files} files", t_list, t_guc_list, t_guc_list / t_list))
    ad_a.close()
    ad_b.close()
    src.unlink()
    return rows


class _Sites:
    def __init__(self, **sites: Any) -> None:
        self.sites = sites

    def get(self, name: str) -> Any:
        return self.sites[name]


def staging_job(ad_a: Any, ad_b: Any, shm: Path) -> None:
    """One copy job a:/put.bin -> b:/tpc.bin run by the staging engine to its end."""
    from fedgate.config import Config
    from fedgate.store.sqlite import SQLiteStore
    from staging.transfer import JobControl, TransferEngine

    db = shm / "bench-jobs.db"
    db.unlink(missing_ok=True)
    store = SQLiteStore(db)
    try:
        store.job_insert({"id": "tpc", "user": "u", "status": "queued", "created_at": 1.0,
                          "from": "a:/put.bin", "to": "b:/tpc.bin", "move": False,
                          "overwrite": True, "recursive": False, "checksum_alg": None,
                          "webhook": None})
        job = store.job_claim("bench", 60)
        assert job is not None
        engine = TransferEngine(Config(), _Sites(a=ad_a, b=ad_b))  # type: ignore[arg-type]
        status, fields = engine.run(job, JobControl(job, "bench", store, 60))
        assert status == "succeeded", fields
        assert fields["checksum"] and fields["checksum"].get("sha256"), fields
    finally:
        store.close()


def _data_root(shm: Path, name: str) -> Path:
    """Server folders in memory (tmpfs): disk writeback made timings swing 3x."""
    from tests.servers.gridftp import _service_account

    acc = _service_account()
    d = shm / f"srv-{name}"
    d.mkdir()
    os.chmod(shm, 0o755)
    os.chown(d, acc.pw_uid, acc.pw_gid)
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--gsi", action="store_true", help="also measure a GSI (gsiftp://) pair")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedgate-bench-gridftp-"))
    shm = tmpfs_dir("fedgate-bench-")
    servers: list[GridFTPServer] = []
    try:
        a = start_server(work / "a", data_root=_data_root(shm, "a"))
        b = start_server(work / "b", data_root=_data_root(shm, "b"))
        servers += [a, b]
        env = dict(os.environ)
        rows = bench_pair("ftp", a, b, env, args.size_mib << 20, args.runs, args.files,
                          args.streams, shm)
        if args.gsi:
            pki = make_pki(work / "pki", a.account.pw_name)
            proxy = pki.make_proxy(work / "pki" / "x509up")
            ga = start_server(work / "ga", gsi=pki, proxy=proxy, data_root=_data_root(shm, "ga"))
            gb = start_server(work / "gb", gsi=pki, proxy=proxy, data_root=_data_root(shm, "gb"))
            servers += [ga, gb]
            genv = dict(env, X509_USER_PROXY=str(proxy), X509_CERT_DIR=str(pki.cert_dir))
            os.environ["X509_CERT_DIR"] = str(pki.cert_dir)
            rows += bench_pair("gsiftp", ga, gb, genv, args.size_mib << 20, args.runs,
                               args.files, args.streams, shm)
        print(f"\nGridFTP adaptor vs globus-url-copy (loopback, median of {args.runs}, "
              f"{args.streams} streams for copies)\n")
        print(f"| {'site':6} | {'operation':30} | {'adaptor s':>9} | {'guc s':>8} "
              f"| {'adaptor/guc speed':>17} |")
        print(f"|{'-' * 8}|{'-' * 32}|{'-' * 11}|{'-' * 10}|{'-' * 19}|")
        for label, op, t_ad, t_guc, ratio in rows:
            print(f"| {label:6} | {op:30} | {t_ad:9.3f} | {t_guc:8.3f} | {ratio:16.2f}x |")
        print("\n(speed ratio = guc time / adaptor time; >= 1 means the adaptor is faster)")
    finally:
        for s in servers:
            s.stop()
            shutil.rmtree(s.data_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
