"""The compose stack's SFTP test site (deploy/sftp-test) run for real, without Docker:
its entrypoint makes the keys and known_hosts, its sshd_config serves SFTP on
loopback, and a client logs in the way fedgate's sftp sites do (key_file +
known_hosts pinning).  Only the container paths and the port are changed."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.deploy.common import SFTP_TEST

SSHD = "/usr/sbin/sshd"


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"sshd exited: {err}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("sshd did not listen")


@pytest.fixture
def sftp_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    if os.geteuid() != 0:
        pytest.skip("the SFTP test site's entrypoint runs as root (chown, sshd)")
    if not Path(SSHD).exists():
        pytest.skip("OpenSSH server is not installed (scripts/setup-test-env.sh installs it)")
    # sshd's StrictModes wants root-owned, not world-writable parents: not under /tmp
    base = Path(tmp_path_factory.mktemp("sftp-test"))
    root = Path("/run") / f"fedgate-sftp-test-{os.getpid()}-{base.name}"
    root.mkdir(mode=0o755)
    keys, etc, data = root / "keys", root / "etc", root / "data"
    for d in (keys, etc, data):
        d.mkdir(mode=0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    conf = (SFTP_TEST / "sshd_config").read_text()
    conf = (conf.replace("Port 22", f"Port {port}")
                .replace("ListenAddress 0.0.0.0", "ListenAddress 127.0.0.1")
                .replace("/etc/ssh/", f"{etc}/")
                .replace("AllowUsers fedgate", "AllowUsers nobody")
                .replace("PidFile /run/sshd.pid", f"PidFile {root}/sshd.pid"))
    (etc / "sshd_config").write_text(conf)
    env = {**os.environ, "KEYS": str(keys), "SSH_ETC": str(etc), "SFTP_USER": "nobody",
           "CLIENT_UID": str(os.getuid()), "SFTP_HOST_NAME": f"[127.0.0.1]:{port}"}
    Path("/run/sshd").mkdir(exist_ok=True)

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sh", str(SFTP_TEST / "entrypoint.sh")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_port(port, proc)
        return proc

    procs = [start()]
    site = {"port": port, "keys": keys, "data": data, "restart": None}

    def restart() -> None:
        procs[-1].send_signal(signal.SIGTERM)
        procs[-1].wait(10)
        procs.append(start())

    site["restart"] = restart
    try:
        yield site
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def _sftp_roundtrip(port: int, keys: Path, data: Path) -> list[str]:
    import asyncssh

    async def run() -> list[str]:
        async with asyncssh.connect(
                "127.0.0.1", port, username="nobody",
                client_keys=[asyncssh.read_private_key(str(keys / "id_ed25519"))],
                known_hosts=str(keys / "known_hosts"), agent_path=None) as conn, \
                conn.start_sftp_client() as sftp:
            async with sftp.open(f"{data}/hello.txt", "w") as fh:
                await fh.write("hello from fedgate\n")
            return [str(n) for n in await sftp.listdir(str(data))]

    return asyncio.run(run())


def test_keys_known_hosts_and_sftp_login(sftp_site: dict[str, object]) -> None:
    port, keys, data = sftp_site["port"], sftp_site["keys"], sftp_site["data"]
    assert isinstance(port, int) and isinstance(keys, Path) and isinstance(data, Path)
    assert (keys / "known_hosts").read_text().startswith(f"[127.0.0.1]:{port} ssh-ed25519 ")
    assert (keys / "ssh_host_ed25519_key").stat().st_mode & 0o077 == 0
    assert (keys / "id_ed25519").stat().st_uid == os.getuid()
    assert "hello.txt" in _sftp_roundtrip(port, keys, data)
    assert (data / "hello.txt").read_text() == "hello from fedgate\n"


def test_restart_keeps_the_keys(sftp_site: dict[str, object]) -> None:
    keys = sftp_site["keys"]
    assert isinstance(keys, Path)
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    restart = sftp_site["restart"]
    assert callable(restart)
    restart()
    after = {p.name: p.read_bytes() for p in keys.iterdir()}
    assert before == after


def test_password_login_is_refused(sftp_site: dict[str, object]) -> None:
    import asyncssh

    port, keys = sftp_site["port"], sftp_site["keys"]
    assert isinstance(port, int) and isinstance(keys, Path)

    async def run() -> None:
        async with asyncssh.connect("127.0.0.1", port, username="nobody", password="x",
                                    client_keys=None, known_hosts=str(keys / "known_hosts"),
                                    agent_path=None):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(run())
