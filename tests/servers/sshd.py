"""A real OpenSSH server on 127.0.0.1 for the sftp adaptor (pytest plugin).

Fixtures:

* ``sshd_server`` (session): one ``/usr/sbin/sshd -D`` on a free port, with its
  own host keys, serving a test account made for this process (``fgsftp<pid>``,
  random password, deleted at the end) with ``internal-sftp``.
* ``sftp_site`` (function): site options for a fresh empty directory on it,
  authenticated with a client key file (``key_file``) already authorized.
* ``sshd_factory`` (function): start more servers (for tests that stop one).

The module's functions (:func:`ensure_user`, :func:`start_sshd`) are also used
by ``bench/bench_sftp.py``.  Needs root (``useradd``, ``sshd``); skips otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SSHD = "/usr/sbin/sshd"
#: one test account per process (parallel test runs must not share passwords
#: or authorized_keys); removed at the end of the session
TEST_USER = f"fgsftp{os.getpid()}"


def missing_reason() -> str | None:
    """Why an sshd test server cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root to add the test account and run sshd"
    for tool in (SSHD, shutil.which("ssh-keygen"), shutil.which("useradd"),
                 shutil.which("userdel"), shutil.which("chpasswd")):
        if not tool or not os.path.exists(tool):
            return (f"missing {tool or 'ssh-keygen/useradd/chpasswd'} "
                    "(apt-get install openssh-server)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_users: dict[str, tuple[str, Path]] = {}


def ensure_user(name: str = TEST_USER) -> tuple[str, Path]:
    """Create (once) the test account; set a fresh random password once per
    process.  Returns (password, home)."""
    if name in _users:
        return _users[name]
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
        pw = pwd.getpwnam(name)
    password = "pw-" + secrets.token_urlsafe(18)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)
    home = Path(pw.pw_dir)
    home.mkdir(exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    os.chmod(home, 0o755)
    _users[name] = (password, home)
    return password, home


def chown_user(path: Path, name: str = TEST_USER) -> None:
    pw = pwd.getpwnam(name)
    os.chown(path, pw.pw_uid, pw.pw_gid)


@dataclass
class SSHServer:
    """One running sshd; ``stop()``/``start()`` keep the same port and keys."""

    workdir: Path
    port: int
    user: str
    password: str
    home: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    host_key_line: str = ""
    rsa_host_key_line: str = ""
    client_key_file: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.workdir / "sshd_config"

    @property
    def log(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def authorized_keys(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    def start(self) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.config), "-E", str(self.log)],
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
                return
            time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        """Stop the listener AND every session it forked (a real outage)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        import psutil

        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        proc.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        proc.wait(10)
        psutil.wait_procs(children, timeout=10)

    def new_site_dir(self) -> Path:
        base = self.home / "sites"
        if not base.exists():
            base.mkdir()
            chown_user(base, self.user)
        d = base / uuid.uuid4().hex[:12]
        d.mkdir()
        chown_user(d, self.user)
        return d

    def authorize(self, pub_line: str) -> None:
        ssh = self.home / ".ssh"
        if not ssh.exists():
            ssh.mkdir(mode=0o700)
            chown_user(ssh, self.user)
        with open(self.authorized_keys, "a") as fh:
            fh.write(pub_line.strip() + "\n")
        os.chmod(self.authorized_keys, 0o600)
        chown_user(self.authorized_keys, self.user)

    def site(self, name: str = "sftp-test", path: Path | None = None) -> dict[str, Any]:
        return {"name": name, "type": "sftp", "host": self.host, "port": self.port,
                "user": self.user, "path": str(path or self.new_site_dir()),
                "host_key": self.host_key_line, "key_file": self.client_key_file,
                "max_connections": 8}


def remove_user(name: str = TEST_USER) -> None:
    """Delete the test account and its home (end of session)."""
    _users.pop(name, None)
    subprocess.run(["userdel", "-r", "-f", name], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_sshd(workdir: Path, user: str = TEST_USER) -> SSHServer:
    """Start an sshd for ``user`` on a free port (keys and config in ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    password, home = ensure_user(user)
    hk = workdir / "ssh_host_ed25519_key"
    rk = workdir / "ssh_host_rsa_key"
    ck = workdir / "client_ed25519"
    for path, kind in ((hk, "ed25519"), (rk, "rsa"), (ck, "ed25519")):
        if not path.exists():
            extra = ["-b", "2048"] if kind == "rsa" else []
            subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "fedgate-test",
                            "-f", str(path)], check=True)
    port = free_port()
    workdir.joinpath("sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {hk}
HostKey {rk}
PidFile {workdir}/sshd.pid
PasswordAuthentication yes
PubkeyAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers {user}
AuthorizedKeysFile .ssh/authorized_keys
Subsystem sftp internal-sftp
MaxStartups 200:30:400
MaxSessions 100
LogLevel VERBOSE
""")
    server = SSHServer(workdir=workdir, port=port, user=user, password=password, home=home)
    server.host_key_line = " ".join(Path(f"{hk}.pub").read_text().split()[:2])
    server.rsa_host_key_line = " ".join(Path(f"{rk}.pub").read_text().split()[:2])
    server.client_key_file = str(ck)
    pub = Path(f"{ck}.pub").read_text().strip()
    auth = server.authorized_keys
    if not auth.exists() or pub.split()[1] not in auth.read_text():
        server.authorize(pub)
    server.start()
    return server


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    reason = missing_reason()
    if reason:
        pytest.skip(f"sshd test server: {reason}")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
    remove_user(server.user)


@pytest.fixture
def sftp_site(sshd_server: SSHServer) -> dict[str, Any]:
    """Site options for a fresh empty directory on the session's sshd."""
    return sshd_server.site()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Any]:
    """Start extra sshd instances (stopped at teardown)."""
    reason = missing_reason()
    if reason:
        pytest.skip(f"sshd test server: {reason}")
    started: list[SSHServer] = []

    def make() -> SSHServer:
        server = start_sshd(tmp_path / f"sshd{len(started)}")
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
