"""Secrets: ``${ENV}``/``file:`` references, Fernet sealing, redaction.

Secrets are resolved once at config load.  The gateway's own secrets at rest
(e.g. its SSH private key) are sealed with ``secret_key`` (Fernet); with no
``secret_key`` configured a random one is generated into the data directory
(0600) so that nothing is ever stored in clear.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SecretError(ValueError):
    """A secret reference could not be resolved (message names no secret value)."""


def resolve_secret(value: str, base_dir: Path | None = None) -> str:
    """Resolve ``${VAR}`` (anywhere in the string) and a whole-value ``file:/path``."""
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from exc

    def env(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise SecretError(f"environment variable {name} is not set")
        return os.environ[name]

    return _ENV_RE.sub(env, value)


class SecretBox:
    """Seals bytes with Fernet (AES-128-CBC + HMAC-SHA256)."""

    def __init__(self, key_material: str | bytes) -> None:
        raw = key_material.encode() if isinstance(key_material, str) else key_material
        try:
            self._fernet = Fernet(raw)
        except (ValueError, TypeError):
            # any passphrase: derive a Fernet key from it
            digest = hashlib.sha256(b"fedgate-secret-key\x00" + raw).digest()
            self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken as exc:
            raise SecretError("sealed data does not open with this secret_key") from exc

    @classmethod
    def for_data_dir(cls, data_dir: Path, configured: str | None) -> SecretBox:
        """The configured key, else one generated once into ``data_dir``."""
        if configured:
            return cls(configured)
        key_file = data_dir / "secret.key"
        if not key_file.exists():
            # written whole under a private name, then linked into place: roles
            # starting together on one data dir all end up with the same key and
            # none reads a half-written file
            data_dir.mkdir(parents=True, exist_ok=True)
            tmp = data_dir / f".secret.key.{os.getpid()}.{os.urandom(4).hex()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(Fernet.generate_key())
                    fh.flush()
                    os.fsync(fh.fileno())
                with contextlib.suppress(FileExistsError):  # another process won
                    os.link(tmp, key_file)
            finally:
                tmp.unlink(missing_ok=True)
        return cls(key_file.read_bytes().strip())


REDACTED = "***"
