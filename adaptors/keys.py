"""SSH keys of the gateway: its own client key, host-key pinning, key deployment.

* The gateway has ONE Ed25519 client key, generated on first use and kept in
  ``<data_dir>/ssh/`` sealed with :attr:`AdaptorContext.encrypt` (Fernet with
  the configured ``secret_key``).  The private key never leaves the gateway.
* Host keys are pinned per site (``host_key`` or ``known_hosts``);
  :class:`HostKeyPin` gives the same trust decision to asyncssh (normal use)
  and to paramiko (the one-time password login that installs the key).
* :func:`deploy_public_key` logs in ONCE with a password (paramiko), creates
  ``~/.ssh`` (0700) and appends the public key to ``~/.ssh/authorized_keys``
  (0600) unless the key is already there.  The password is never stored,
  logged or put in an exception message.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
import paramiko

from adaptors import errors
from adaptors.base import AdaptorContext

log = logging.getLogger(__name__)

#: file names under ``<data_dir>/ssh``
KEY_DIR = "ssh"
PRIVATE_KEY_FILE = "gateway_ed25519.key.enc"
PUBLIC_KEY_FILE = "gateway_ed25519.pub"
RECORDS_FILE = "deployed-keys.json"
#: kind of the deployed-key records in the state store
RECORD_KIND = "sftp_deployed_key"
#: the sealed gateway key, shared by the processes of one deployment
KEY_RECORD_KIND = "ssh_gateway_key"
KEY_RECORD_KEY = "ed25519"

_key_lock = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between threads and processes sharing ``data_dir``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _key_lock, open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def gateway_key(context: AdaptorContext) -> asyncssh.SSHKey:
    """The gateway's Ed25519 client key, created (and sealed) on first use.

    Kept sealed in ``<data_dir>/ssh``; when the context has a state store the
    sealed key is also published there, so that several gateway processes
    sharing one store use one key (one line in authorized_keys).
    """
    key_dir = Path(context.data_dir) / KEY_DIR
    enc_path = key_dir / PRIVATE_KEY_FILE
    with _file_lock(key_dir / ".lock"):
        sealed = enc_path.read_bytes() if enc_path.exists() else None
        if sealed is None and context.records is not None:
            sealed = _sealed_from_records(context)
        if sealed is None:
            key = asyncssh.generate_private_key("ssh-ed25519", comment="fedgate-gateway")
            if context.encrypt(b"probe") == b"probe":
                log.warning("no secret_key configured: the gateway's SSH key in %s is "
                            "protected by file permissions only", key_dir)
            sealed = context.encrypt(key.export_private_key("openssh"))
            if context.records is not None:
                context.records.put_record(KEY_RECORD_KIND, KEY_RECORD_KEY, {
                    "sealed": base64.b64encode(sealed).decode(), "created_at": now_iso(),
                    "public_key": public_line(key)})
                sealed = _sealed_from_records(context) or sealed  # first writer wins
        try:
            key = asyncssh.import_private_key(context.decrypt(sealed))
        except Exception as exc:
            raise errors.Unavailable(
                "cannot unseal the gateway's SSH key (wrong secret_key?)") from exc
        if not enc_path.exists():
            _write_private(enc_path, sealed)
            (key_dir / PUBLIC_KEY_FILE).write_bytes(key.export_public_key("openssh"))
    return key


def _sealed_from_records(context: AdaptorContext) -> bytes | None:
    assert context.records is not None
    record = context.records.get_record(KEY_RECORD_KIND, KEY_RECORD_KEY)
    if not record or not record.get("sealed"):
        return None
    return base64.b64decode(str(record["sealed"]))


def load_key_file(path: str) -> asyncssh.SSHKey:
    """A client key given as ``key_file`` (unencrypted OpenSSH/PEM private key)."""
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not an unencrypted private key"
        raise errors.Unavailable(f"cannot read key_file {path}: {reason}") from exc


def public_line(key: asyncssh.SSHKey, comment: str = "fedgate-gateway") -> str:
    """``ssh-ed25519 AAAA... comment`` for authorized_keys."""
    blob = key.export_public_key("openssh").decode().split()
    return f"{blob[0]} {blob[1]} {comment}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return str(key.get_fingerprint("sha256"))


class Secret:
    """A value that does not show in ``repr``/``str`` (so not in logs or dumps)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


# -- host keys -----------------------------------------------------------------
@dataclass
class HostKeyPin:
    """Which server host keys a site trusts.

    ``keys`` come from ``host_key`` and/or the ``known_hosts`` file entries
    matching the site's host and port.  ``insecure`` skips the check (only with
    the explicit option ``insecure_skip_host_key: true``).
    """

    host: str
    port: int
    host_key: str | None = None
    known_hosts: str | None = None
    insecure: bool = False
    _keys: list[asyncssh.SSHKey] | None = field(default=None, repr=False)
    _ca_keys: list[asyncssh.SSHKey] = field(default_factory=list, repr=False)

    def config_error(self) -> str | None:
        if self.insecure or self.host_key or self.known_hosts:
            return None
        return ("no host key pinned: set host_key or known_hosts "
                "(or insecure_skip_host_key: true)")

    def _load(self) -> list[asyncssh.SSHKey]:
        if self._keys is not None:
            return self._keys
        keys: list[asyncssh.SSHKey] = []
        if self.host_key:
            try:
                keys.append(asyncssh.import_public_key(self.host_key.strip()))
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise errors.Unavailable("host_key is not an OpenSSH public key line") from exc
        if self.known_hosts:
            try:
                kh = asyncssh.read_known_hosts(self.known_hosts)
            except (OSError, ValueError) as exc:
                raise errors.Unavailable(
                    f"cannot read known_hosts file {self.known_hosts}") from exc
            match = kh.match(self.host, self.host, self.port)
            keys.extend(match[0])
            self._ca_keys = list(match[1])
            if not keys and not self._ca_keys:
                raise errors.Unavailable(
                    f"known_hosts file {self.known_hosts} has no key for "
                    f"{self.host} port {self.port}")
        self._keys = keys
        return keys

    def asyncssh_known_hosts(self) -> Any:
        """The ``known_hosts`` argument for ``asyncssh.connect``."""
        if self.insecure:
            return None
        keys = self._load()
        return (keys, self._ca_keys, [])

    def server_host_key_algs(self) -> list[str] | str:
        """Ask the server for the pinned key's type (it may offer several)."""
        if self.insecure:
            return "default"
        algs: list[str] = []
        for key in self._load():
            for alg in key.sig_algorithms:
                name = alg.decode() if isinstance(alg, bytes) else str(alg)
                if name not in algs:
                    algs.append(name)
        return algs or "default"

    def paramiko_policy(self, client: paramiko.SSHClient) -> None:
        """Make a paramiko client trust exactly the pinned keys."""
        if self.insecure:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            return
        keys = self._load()
        if not keys:
            raise errors.Unavailable(
                "the key deployment login needs a pinned host key (host_key or a "
                "known_hosts key entry), not only a host CA")
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        store = client.get_host_keys()
        for key in keys:
            alg = key.get_algorithm()
            pkey = paramiko.PKey.from_type_string(alg, key.public_data)
            store.add(name, pkey.get_name(), pkey)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())


# -- deployed-key records ---------------------------------------------------------
class KeyRecords:
    """Deployed-key records: in the state store when the context has one, else
    in a small JSON file under ``<data_dir>/ssh`` (no secrets in either)."""

    def __init__(self, context: AdaptorContext) -> None:
        self.context = context
        self._path = Path(context.data_dir) / KEY_DIR / RECORDS_FILE

    def get(self, key: str) -> dict[str, Any] | None:
        if self.context.records is not None:
            return self.context.records.get_record(RECORD_KIND, key)
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return None
        value = data.get(key)
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.context.records is not None:
            self.context.records.put_record(RECORD_KIND, key, value)
            return
        with _file_lock(self._path.parent / ".lock"):
            try:
                data = json.loads(self._path.read_text())
            except (OSError, ValueError):
                data = {}
            data[key] = value
            _write_private(self._path, json.dumps(data, indent=1, sort_keys=True).encode())


# -- deployment ------------------------------------------------------------------
def _has_key(authorized: str, blob: str) -> bool:
    """True when a line of authorized_keys carries the key ``blob`` (base64)."""
    for line in authorized.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if blob in line.split():
            return True
    return False


def deploy_public_key(pin: HostKeyPin, user: str, password: str, key_line: str,
                      timeout: float = 20.0) -> bool:
    """Log in once with ``password`` and make ``key_line`` an authorized key.

    Returns True when the line was appended, False when it was already there.
    Raises :class:`errors.Unavailable` (secret-free message) on any failure.
    """
    blob = key_line.split()[1]
    client = paramiko.SSHClient()
    try:
        pin.paramiko_policy(client)
        try:
            client.connect(pin.host, port=pin.port, username=user, password=password,
                           look_for_keys=False, allow_agent=False, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout)
        except paramiko.BadHostKeyException as exc:
            raise errors.Unavailable(
                f"host key of {pin.host}:{pin.port} does not match the pinned key; "
                "refusing to send the password") from exc
        except paramiko.AuthenticationException as exc:
            raise errors.Unavailable(
                f"authentication failed: password login as {user} was refused "
                "while installing the gateway key") from exc
        except (paramiko.SSHException, OSError) as exc:
            raise errors.Unavailable(
                f"cannot connect to {pin.host}:{pin.port} to install the gateway key: "
                f"{exc.__class__.__name__}") from exc
        try:
            sftp = client.open_sftp()
            try:
                return _append_key(sftp, key_line, blob)
            finally:
                sftp.close()
        except (OSError, paramiko.SSHException) as exc:
            raise errors.Unavailable(
                f"could not install the gateway key in ~{user}/.ssh/authorized_keys: "
                f"{getattr(exc, 'strerror', None) or exc.__class__.__name__}") from exc
    finally:
        client.close()


def _append_key(sftp: paramiko.SFTPClient, key_line: str, blob: str) -> bool:
    home = sftp.normalize(".")
    ssh_dir = home.rstrip("/") + "/.ssh"
    auth = ssh_dir + "/authorized_keys"
    try:
        sftp.stat(ssh_dir)
    except FileNotFoundError:
        sftp.mkdir(ssh_dir, 0o700)
        sftp.chmod(ssh_dir, 0o700)
    try:
        with sftp.open(auth, "r") as fh:
            current = fh.read().decode("utf-8", "replace")
        existed = True
    except FileNotFoundError:
        current, existed = "", False
    if _has_key(current, blob):
        return False
    prefix = "\n" if current and not current.endswith("\n") else ""
    with sftp.open(auth, "a") as fh:
        fh.write((prefix + key_line + "\n").encode())
    if not existed:
        sftp.chmod(auth, 0o600)
    return True


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
