"""Real ``globus-gridftp-server`` instances on 127.0.0.1 for the gridftp adaptor.

Two servers run per test session:

* a clear-text FTP server (``ftp://``) authenticating a local account against a
  ``-password-file`` (the DES-crypt format ``globus-gridftp-password`` writes);
* a GSI server (``gsiftp://``) with a host certificate from a throwaway CA made
  here with ``cryptography``, a grid-mapfile mapping the test user's DN to the
  same local account, and the user's RFC 3820 proxy written next to it.

A third server (``gridftp_server_b``) is started on demand for the
server-to-server copy tests.  Running as root the servers setuid to a system
account ``fedgate-gftp`` (created when missing); as another user they run as
that user.  Site folders live under a world-traversable temporary folder owned
by that account.

Fixtures: ``gridftp_server`` / ``gsiftp_server`` (session), ``gridftp_site`` /
``gsiftp_site`` (function: a fresh empty folder, as a site-options dict),
``gridftp_pki`` (session: CA folder, user certificate, proxy maker).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SERVER_BIN = shutil.which("globus-gridftp-server") or "/usr/sbin/globus-gridftp-server"
SERVICE_USER = "fedgate-gftp"
FTP_PASSWORD = "gftp-" + uuid.uuid4().hex[:12]
USER_DN = "/O=fedgate-test/OU=users/CN=fedgate test user"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"globus-gridftp-server exited: {log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"globus-gridftp-server did not listen on {port}")


def _service_account() -> pwd.struct_passwd:
    """The account the servers run file operations as."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                        SERVICE_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def _des_crypt(password: str) -> str:
    """DES crypt, the format globus-gridftp-password writes (perl's crypt)."""
    out = subprocess.run(["perl", "-e", 'print crypt($ARGV[0], $ARGV[1])', password, "fg"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


# -- a throwaway PKI -----------------------------------------------------------------


@dataclass
class PKI:
    """CA folder (X509_CERT_DIR layout), host credential, user credential."""

    root: Path
    cert_dir: Path
    host_cert: Path
    host_key: Path
    user_cert: Path
    user_key: Path
    gridmap: Path
    user_dn: str = USER_DN
    _ca: Any = field(default=None, repr=False)

    def make_proxy(self, out: Path, *, valid: dt.timedelta = dt.timedelta(hours=12),
                   expired: bool = False) -> Path:
        """Write an RFC 3820 proxy of the user (cert, key, user cert) to ``out``."""
        return _make_proxy(self, out, valid=valid, expired=expired)


def _name(dn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    oids = {"O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
            "CN": NameOID.COMMON_NAME}
    attrs = []
    for part in dn.strip("/").split("/"):
        k, _, v = part.partition("=")
        attrs.append(x509.NameAttribute(oids[k], v))
    return x509.Name(attrs)


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))


def _pem_cert(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def make_pki(root: Path, account: str) -> PKI:
    """A CA, a host certificate for 127.0.0.1/localhost and a user certificate."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    root.mkdir(parents=True, exist_ok=True)
    cert_dir = root / "certificates"
    cert_dir.mkdir(exist_ok=True)
    # the server reads trust anchors after it setuid()s to the mapped account
    # (data-channel authentication), so the folders must be traversable
    for d in (root.parent, root, cert_dir):
        os.chmod(d, 0o755)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_dn = "/O=fedgate-test/CN=fedgate test CA"
    ca_key = _key()
    ca_name = _name(ca_dn)
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = root / "ca.pem"
    _write(ca_pem, _pem_cert(ca_cert), 0o644)
    policy = (f"access_id_CA X509 '{ca_dn}'\npos_rights globus CA:sign\n"
              "cond_subjects globus '\"/O=fedgate-test/*\"'\n")
    for flag in ("-subject_hash", "-subject_hash_old"):
        h = subprocess.run(["openssl", "x509", "-noout", flag, "-in", str(ca_pem)],
                           check=True, capture_output=True, text=True).stdout.strip()
        _write(cert_dir / f"{h}.0", _pem_cert(ca_cert), 0o644)
        _write(cert_dir / f"{h}.signing_policy", policy.encode(), 0o644)

    def leaf(dn: str, server: bool) -> tuple[Any, Any]:
        key = _key()
        b = (
            x509.CertificateBuilder().subject_name(_name(dn)).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=True, data_encipherment=True,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
        )
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    host_cert, host_key = leaf("/O=fedgate-test/OU=hosts/CN=localhost", True)
    user_cert, user_key = leaf(USER_DN, False)
    pki = PKI(root=root, cert_dir=cert_dir, host_cert=root / "hostcert.pem",
              host_key=root / "hostkey.pem", user_cert=root / "usercert.pem",
              user_key=root / "userkey.pem", gridmap=root / "grid-mapfile")
    _write(pki.host_cert, _pem_cert(host_cert), 0o644)
    _write(pki.host_key, _pem_key(host_key), 0o600)
    _write(pki.user_cert, _pem_cert(user_cert), 0o644)
    _write(pki.user_key, _pem_key(user_key), 0o600)
    _write(pki.gridmap, f'"{USER_DN}" {account}\n'.encode(), 0o644)
    pki._ca = (ca_cert, ca_key)
    pki._user = (user_cert, user_key)  # type: ignore[attr-defined]
    return pki


# DER of ProxyCertInfo { proxyPolicy { id-ppl-inheritAll } } (RFC 3820)
_PROXY_CERT_INFO_DER = bytes.fromhex("300c300a06082b06010505071501")


def _make_proxy(pki: PKI, out: Path, *, valid: dt.timedelta, expired: bool) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    user_cert, user_key = pki._user  # type: ignore[attr-defined]
    key = _key()
    serial = x509.random_serial_number() >> 96
    subject = x509.Name([*user_cert.subject, x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)) if expired else (
        now - dt.timedelta(minutes=5), now + valid)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(user_cert.subject)
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=True, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.5.5.7.1.14"),
                                                  _PROXY_CERT_INFO_DER), critical=True)
        .sign(user_key, hashes.SHA256())
    )
    _write(out, _pem_cert(cert) + _pem_key(key) + _pem_cert(user_cert), 0o600)
    return out


# -- servers --------------------------------------------------------------------------


@dataclass
class GridFTPServer:
    """One running globus-gridftp-server."""

    port: int
    scheme: str
    data_root: Path
    log: Path
    transfer_log: Path
    proc: subprocess.Popen[bytes]
    account: pwd.struct_passwd
    user: str | None = None
    password: str | None = None
    pki: PKI | None = None
    proxy: Path | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def new_folder(self) -> Path:
        d = self.data_root / uuid.uuid4().hex[:12]
        d.mkdir()
        os.chown(d, self.account.pw_uid, self.account.pw_gid)
        return d

    def site(self, name: str, folder: Path | None = None) -> dict[str, Any]:
        folder = folder or self.new_folder()
        opts: dict[str, Any] = {"name": name, "type": "gridftp",
                                "url": f"{self.base_url}{folder}"}
        if self.scheme == "ftp":
            opts.update(user=self.user, password=self.password)
        else:
            assert self.pki is not None
            opts.update(x509_proxy=str(self.proxy), x509_cert_dir=str(self.pki.cert_dir))
        return opts

    def remove_data(self) -> None:
        """Delete the site folders (retrying: a dying server may still write)."""
        for _ in range(5):
            shutil.rmtree(self.data_root, ignore_errors=True)
            if not self.data_root.exists():
                return
            time.sleep(0.2)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(0.3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 9)


def start_server(workdir: Path, *, gsi: PKI | None = None, proxy: Path | None = None,
                 data_root: Path | None = None) -> GridFTPServer:
    """Start a server on a free loopback port (ftp with a password file, or GSI)."""
    account = _service_account()
    workdir.mkdir(parents=True, exist_ok=True)
    if data_root is None:
        data_root = Path(tempfile.mkdtemp(prefix="fedgate-gridftp-"))
        os.chmod(data_root, 0o755)
        os.chown(data_root, account.pw_uid, account.pw_gid)
    port = _free_port()
    log = workdir / f"server-{port}.log"
    tlog = workdir / f"transfers-{port}.log"
    args = [SERVER_BIN, "-p", str(port), "-control-interface", "127.0.0.1",
            "-data-interface", "127.0.0.1", "-l", str(log), "-log-level", "ERROR,WARN,INFO",
            "-Z", str(tlog), "-log-module", "stdio:buffer=0",
            "-allow-disabled-login"]
    env = dict(os.environ)
    for k in ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "X509_CERT_DIR", "GRIDMAP"):
        env.pop(k, None)
    user = password = None
    if gsi is None:
        pwfile = workdir / f"passwd-{port}"
        user, password = account.pw_name, FTP_PASSWORD
        _write(pwfile, (f"{user}:{_des_crypt(password)}:{account.pw_uid}:{account.pw_gid}::"
                        f"{data_root}:/bin/sh\n").encode(), 0o600)
        args += ["-password-file", str(pwfile)]
    else:
        env.update(X509_USER_CERT=str(gsi.host_cert), X509_USER_KEY=str(gsi.host_key),
                   X509_CERT_DIR=str(gsi.cert_dir), GRIDMAP=str(gsi.gridmap))
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(workdir / f"stderr-{port}.log", "wb"),  # noqa: SIM115
                            start_new_session=True, preexec_fn=_die_with_parent)
    _wait_port(port, proc, log)
    return GridFTPServer(port=port, scheme="gsiftp" if gsi else "ftp", data_root=data_root,
                         log=log, transfer_log=tlog, proc=proc, account=account, user=user,
                         password=password, pki=gsi, proxy=proxy)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL the server when the test process dies
    (a crashed run must not leave servers behind)."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def _skip_without_server() -> None:
    if not os.path.exists(SERVER_BIN):
        pytest.skip("globus-gridftp-server is not installed (scripts/setup-test-env.sh)")
    try:
        import gfal2  # noqa: F401
    except ImportError:
        pytest.skip("python3-gfal2 is not importable (use the venv from setup-test-env.sh)")


@pytest.fixture(scope="session")
def gridftp_workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fedgate-gridftp-run-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def gridftp_server(gridftp_workdir: Path) -> Iterator[GridFTPServer]:
    _skip_without_server()
    srv = start_server(gridftp_workdir / "ftp")
    yield srv
    srv.stop()
    srv.remove_data()


@pytest.fixture(scope="session")
def gridftp_server_b(gridftp_workdir: Path) -> Iterator[GridFTPServer]:
    """A second clear-text server (for server-to-server copies)."""
    _skip_without_server()
    srv = start_server(gridftp_workdir / "ftp-b")
    yield srv
    srv.stop()
    srv.remove_data()


@pytest.fixture(scope="session")
def gridftp_pki(gridftp_workdir: Path) -> PKI:
    _skip_without_server()
    return make_pki(gridftp_workdir / "pki", _service_account().pw_name)


@pytest.fixture(scope="session")
def gsiftp_server(gridftp_workdir: Path, gridftp_pki: PKI) -> Iterator[GridFTPServer]:
    proxy = gridftp_pki.make_proxy(gridftp_workdir / "pki" / "x509up_test")
    srv = start_server(gridftp_workdir / "gsi", gsi=gridftp_pki, proxy=proxy)
    yield srv
    srv.stop()
    srv.remove_data()


@pytest.fixture
def gridftp_site(gridftp_server: GridFTPServer) -> dict[str, Any]:
    """Site options for a fresh empty folder on the ftp:// test server."""
    return gridftp_server.site("gridftp-test")


@pytest.fixture
def gsiftp_site(gsiftp_server: GridFTPServer) -> dict[str, Any]:
    """Site options for a fresh empty folder on the gsiftp:// (GSI) test server."""
    return gsiftp_server.site("gsiftp-test")
