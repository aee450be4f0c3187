"""Gateway on a local site vs `rclone serve webdav` on the same folder, one run.

    .venv/bin/python bench/bench_gateway.py [--size-mib 1024] [--files 10000]

Prints a Markdown table: GET/PUT of a large file (curl as the client, median
of 3), PROPFIND Depth 1 of a folder with many files, server RSS growth during
GET and PUT, and 50 concurrent clients doing small GETs (p99, errors) while
200 idle keep-alive sockets are held open.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    RSSSampler,
    curl,
    free_port,
    machine,
    start_fedgate,
    start_rclone,
    stop,
    table,
    timed,
    wait_http,
)
from fedgate.auth import hash_password

USER, PW = "bench", "bench-password"


def make_data(root: Path, size_mib: int, files: int) -> None:
    block = os.urandom(1 << 20)
    with open(root / "big.bin", "wb") as fh:
        for _ in range(size_mib):
            fh.write(block)
    many = root / "many"
    many.mkdir()
    for i in range(files):
        (many / f"file-{i:05d}.dat").write_bytes(b"x" * (i % 100))
    small = root / "small"
    small.mkdir()
    for i in range(20):
        (small / f"s{i}.txt").write_bytes(os.urandom(4096))


def concurrent_gets(base: str, clients: int = 50, per_client: int = 40, idle: int = 200
                    ) -> tuple[float, float, int]:
    host, port = base.split("//")[1].split("/")[0].split(":")
    idle_socks = []
    for _ in range(idle):
        s = socket.create_connection((host, int(port)))
        idle_socks.append(s)
    lat: list[float] = []
    errors = 0

    def client(i: int) -> tuple[list[float], int]:
        sess = requests.Session()
        sess.auth = (USER, PW)
        out, errs = [], 0
        for j in range(per_client):
            t0 = time.perf_counter()
            try:
                r = sess.get(f"{base}/small/s{(i + j) % 20}.txt", timeout=30)
                if r.status_code != 200:
                    errs += 1
            except requests.RequestException:
                errs += 1
            out.append(time.perf_counter() - t0)
        return out, errs

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as ex:
        for out, errs in ex.map(client, range(clients)):
            lat += out
            errors += errs
    wall = time.perf_counter() - t0
    for s in idle_socks:
        s.close()
    lat.sort()
    p99 = lat[int(len(lat) * 0.99) - 1]
    return p99 * 1000, len(lat) / wall, errors


def run(size_mib: int, files: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="fedgate-bench-"))
    data = work / "site"
    data.mkdir()
    make_data(data, size_mib, files)
    upload = work / "upload.bin"
    os.link(data / "big.bin", upload)
    fport, rport = free_port(), free_port()
    cfg = {"name": "bench", "listen": {"webdav": f"127.0.0.1:{fport}"},
           "state": f"sqlite:///{work / 'state.db'}", "data_dir": str(work / "fg"),
           "sites": [{"name": "local", "type": "local", "path": str(data)}],
           "users": [{"name": USER, "password_hash": hash_password(PW)}]}
    fg = start_fedgate(cfg, work)
    rc = start_rclone(str(data), rport, USER, PW)
    servers = {"fedgate": (f"http://127.0.0.1:{fport}/local", fg),
               "rclone": (f"http://127.0.0.1:{rport}", rc)}
    results: dict[str, dict[str, float]] = {}
    try:
        for _name, (url, _) in servers.items():
            wait_http(url + "/")
        for name, (url, proc) in servers.items():
            r: dict[str, float] = {}
            auth = ["-u", f"{USER}:{PW}"]
            r["get"] = timed(lambda url=url, auth=auth: curl(*auth, "-o", "/dev/null",
                                                             url + "/big.bin"))
            r["put"] = timed(lambda url=url, auth=auth: curl(*auth, "-T", str(upload),
                                                  url + "/up.bin"))
            r["propfind"] = timed(lambda url=url, auth=auth: curl(
                *auth, "-X", "PROPFIND", "-H", "Depth: 1", "-o", "/dev/null", url + "/many/"))
            curl(*auth, "-o", "/dev/null", url + "/small/s1.txt")  # warm up lazy imports
            s = RSSSampler(proc.pid)
            curl(*auth, "-o", "/dev/null", url + "/big.bin")
            r["rss_get"] = s.done()
            s = RSSSampler(proc.pid)
            curl(*auth, "-T", str(upload), url + "/up2.bin")
            r["rss_put"] = s.done()
            r["p99"], r["rps"], r["errors"] = concurrent_gets(url)
            results[name] = r
    finally:
        for _, proc in servers.values():
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    f, rr = results["fedgate"], results["rclone"]
    mib = size_mib
    rows = [
        [f"GET {mib} MiB (s)", f"{f['get']:.2f}", f"{rr['get']:.2f}",
         f"{rr['get'] / f['get']:.2f}x rate"],
        [f"PUT {mib} MiB (s)", f"{f['put']:.2f}", f"{rr['put']:.2f}",
         f"{rr['put'] / f['put']:.2f}x rate"],
        [f"PROPFIND Depth 1, {files} files (s)", f"{f['propfind']:.3f}",
         f"{rr['propfind']:.3f}", f"{f['propfind'] / rr['propfind']:.2f}x time"],
        ["RSS growth during GET (MiB)", f"{f['rss_get']:.1f}", f"{rr['rss_get']:.1f}", ""],
        ["RSS growth during PUT (MiB)", f"{f['rss_put']:.1f}", f"{rr['rss_put']:.1f}", ""],
        ["50 clients small GET, p99 (ms)", f"{f['p99']:.1f}", f"{rr['p99']:.1f}", ""],
        ["50 clients small GET, req/s", f"{f['rps']:.0f}", f"{rr['rps']:.0f}", ""],
        ["50 clients small GET, errors", f"{f['errors']:.0f}", f"{rr['errors']:.0f}", ""],
    ]
    return table(f"Gateway vs rclone serve webdav, local folder — {time.strftime('%Y-%m-%d')}, "
                 f"{machine()}", ["measure", "fedgate", "rclone", "fedgate vs rclone"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    a = ap.parse_args()
    print(run(a.size_mib, a.files))


if __name__ == "__main__":
    main()
