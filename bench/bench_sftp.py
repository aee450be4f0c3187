#!/usr/bin/env python3
"""Benchmark: the sftp adaptor against ``scp`` between the same endpoints.

Starts its own OpenSSH server on 127.0.0.1 (like the tests; needs root and
openssh-server), then for ``--repeat`` rounds, interleaved so that background
load hits both sides alike:

* PUT: a local file of ``--size-mib`` MiB -> remote, via the adaptor's staged
  writer (1 MiB writes, commit = fsync + rename) and via ``scp``;
* GET: remote -> a local file, via the adaptor's reader and via ``scp``;

``scp`` runs twice: with its default cipher (what users get) and with
``aes128-gcm@openssh.com`` (the cipher the adaptor negotiates).  Then it lists
a directory of ``--files`` files with the adaptor and with ``sftp -b``.
Prints medians and speed ratios (scp time / adaptor time; >= 1 means the
adaptor is faster).

    sudo PYTHONPATH=. .venv/bin/python bench/bench_sftp.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptors import create_adaptor
from adaptors.base import Adaptor, AdaptorContext
from tests.servers.sshd import (
    SSHServer,
    chown_user,
    missing_reason,
    remove_user,
    start_sshd,
)

MiB = 1024 * 1024


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def client_cpu() -> float:
    """CPU seconds used by this process and its finished children (scp/ssh)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
    reason = missing_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-sftp-"))
    server = start_sshd(work / "sshd")
    try:
        return measure(args, work, server)
    finally:
        server.stop()
        remove_user(server.user)
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path, server: SSHServer) -> int:
    site = server.site("bench")
    remote_dir = Path(site["path"])
    known = work / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {server.host_key_line}\n")
    ssh_opts = ["-q", "-i", server.client_key_file, "-o", f"UserKnownHostsFile={known}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
    target = f"{server.user}@127.0.0.1"

    def scp(src: str, dst: str, cipher: str | None) -> None:
        extra = ["-c", cipher] if cipher else []
        subprocess.run(["scp", *ssh_opts, *extra, "-P", str(server.port), src, dst], check=True)

    src = work / "src.bin"
    with open(src, "wb") as fh:
        block = os.urandom(MiB)
        for i in range(args.size_mib):
            fh.write(block[i % 251:] + block[:i % 251])
    size = src.stat().st_size

    adaptor = create_adaptor(site, AdaptorContext(data_dir=work / "data"))
    adaptor.stat("/")  # connect once, like a running gateway
    nosync = create_adaptor({**site, "fsync": False}, AdaptorContext(data_dir=work / "data"))
    nosync.stat("/")

    def put_adaptor(a: Adaptor = adaptor) -> None:
        w = a.open_write("/up.adaptor", size_hint=size)
        with open(src, "rb") as fh:
            while chunk := fh.read(MiB):
                w.write(chunk)
        w.commit()

    def get_adaptor() -> None:
        r = adaptor.open_read("/up.adaptor")
        with open(work / "down.adaptor", "wb") as fh:
            while chunk := r.read(MiB):
                fh.write(chunk)
        r.close()

    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    cases: list[tuple[str, Callable[[], None]]] = [
        ("PUT adaptor", put_adaptor),
        ("PUT adaptor-nofsync", lambda: put_adaptor(nosync)),
        ("PUT scp", lambda: scp(str(src), f"{target}:{remote_dir}/up.scp", None)),
        ("PUT scp-gcm", lambda: scp(str(src), f"{target}:{remote_dir}/up.scp",
                                    "aes128-gcm@openssh.com")),
        ("GET adaptor", get_adaptor),
        ("GET scp", lambda: scp(f"{target}:{remote_dir}/up.scp", str(work / "down.scp"), None)),
        ("GET scp-gcm", lambda: scp(f"{target}:{remote_dir}/up.scp", str(work / "down.scp"),
                                    "aes128-gcm@openssh.com")),
    ]
    load_before = os.getloadavg()[0]
    for _ in range(args.repeat):
        for name, fn in cases:
            c0 = client_cpu()
            results.setdefault(name, []).append(timed(fn))
            cpu.setdefault(name, []).append(client_cpu() - c0)
    assert (work / "down.adaptor").stat().st_size == size

    # listing a directory of many files (made directly on the server's disk)
    big = remote_dir / "many"
    big.mkdir()
    for i in range(args.files):
        (big / f"file-{i:06d}.dat").write_bytes(b"x")
    for p in [big, *big.iterdir()]:
        chown_user(p, server.user)
    lists: list[float] = []
    sftp_lists: list[float] = []
    for _ in range(args.repeat):
        lists.append(timed(lambda: adaptor.list("/many")))
        sftp_lists.append(timed(lambda: subprocess.run(
            ["sftp", *ssh_opts, "-P", str(server.port), "-b", "-", target],
            input=f"ls -l {big}\n".encode(), stdout=subprocess.DEVNULL, check=True)))
    n_listed = len(adaptor.list("/many"))
    load_after = os.getloadavg()[0]
    adaptor.close()
    nosync.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    mib = size / MiB
    print(f"\nsftp adaptor vs scp, {mib:.0f} MiB file, 127.0.0.1, median of {args.repeat} "
          f"(load average {load_before:.1f} -> {load_after:.1f}, {os.cpu_count()} cores)\n")
    print("| op | adaptor s (MiB/s) | scp s (MiB/s) | ratio | scp aes-gcm s (MiB/s) | ratio |")
    print("|----|-------------------|---------------|-------|-----------------------|-------|")
    for op in ("PUT", "GET"):
        a, s, g = med[f"{op} adaptor"], med[f"{op} scp"], med[f"{op} scp-gcm"]
        print(f"| {op} | {a:.2f} ({mib / a:.0f}) | {s:.2f} ({mib / s:.0f}) | {s / a:.2f}x "
              f"| {g:.2f} ({mib / g:.0f}) | {g / a:.2f}x |")
    a, s, g = med["PUT adaptor-nofsync"], med["PUT scp"], med["PUT scp-gcm"]
    print(f"| PUT, fsync: false | {a:.2f} ({mib / a:.0f}) | {s:.2f} ({mib / s:.0f}) | "
          f"{s / a:.2f}x | {g:.2f} ({mib / g:.0f}) | {g / a:.2f}x |")
    print("\nratio = scp time / adaptor time (>= 1: the adaptor is faster); the adaptor's "
          "PUT commits with fsync (durable), scp does not")
    print("\nclient-side CPU seconds per GiB (median; independent of other load):")
    for op in ("PUT", "GET"):
        who = ["adaptor", "scp", "scp-gcm"] + (["adaptor-nofsync"] if op == "PUT" else [])
        print(f"  {op}: " + ", ".join(
            f"{w} {statistics.median(cpu[f'{op} {w}']) * 1024 / mib:.2f}" for w in who))
    print(f"\nlisting {n_listed} files: adaptor.list {statistics.median(lists):.3f} s, "
          f"sftp -b 'ls -l' (new connection included) {statistics.median(sftp_lists):.3f} s")
    print("\nall runs (s):")
    for k, v in results.items():
        print(f"  {k:12s} " + " ".join(f"{x:.2f}" for x in v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
