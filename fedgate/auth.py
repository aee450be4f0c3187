"""Authentication and authorisation shared by the gateway and the staging API.

- Basic: argon2id password hashes (``fedgate hash-password``).
- JWT (``Authorization: Bearer`` or ``x-access-token``): the user is found by
  the ``email`` claim, else ``sub``; the token must be signed with an allowed
  asymmetric algorithm that matches the user's key type, carry ``exp`` and
  respect ``nbf``/``iat``/``aud``/``iss`` (SPEC 4.1).  Optionally the keys of an
  OIDC provider (``jwks_url``).
- WLCG scopes (``storage.read:/p storage.modify:/p``) narrow a token.
- Permission rules (``permissions:``) give read/write/none per path prefix.

Failures raise :class:`AuthError`; its ``reason`` is for the log only, never
for the response body.  Nothing here logs a token or a password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from fedgate.config import JWTConfig, Permission, User
from fedgate.namespace import is_within

#: asymmetric algorithms only: never "none", never HS* (public keys are public)
ALLOWED_ALGORITHMS = {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512",
                      "PS256", "PS384", "PS512"}

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("fedgate-dummy-password")


class AuthError(Exception):
    """Authentication failed.  ``reason`` goes to the log, never to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- passwords -------------------------------------------------------------------
def hash_password(password: str) -> str:
    return _HASHER.hash(password)


class PasswordChecker:
    """argon2 verification with a short-lived in-memory cache of successes (keyed
    by an HMAC under a per-process random key, so no password is kept)."""

    def __init__(self, ttl_s: float = 300.0, size: int = 1024) -> None:
        self._key = os.urandom(32)
        self._ok: OrderedDict[bytes, float] = OrderedDict()
        self._ttl = ttl_s
        self._size = size
        self._lock = threading.Lock()

    def verify(self, user: User | None, password: str) -> bool:
        stored = user.password_hash if user else None
        tag = hmac.new(self._key, f"{stored}\x00{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            t = self._ok.get(tag)
            if t is not None and now - t < self._ttl:
                return True
        try:
            _HASHER.verify(stored or _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if stored is None:
            return False
        with self._lock:
            self._ok[tag] = now
            self._ok.move_to_end(tag)
            while len(self._ok) > self._size:
                self._ok.popitem(last=False)
        return True


# -- keys and tokens ---------------------------------------------------------------
def load_public_key(text: str) -> str:
    """Accept PEM, or base64 of PEM (LOBCDER's ``publicKey``); return PEM text."""
    raw = text.strip()
    if not raw.startswith("-----BEGIN"):
        try:
            raw = base64.b64decode(raw, validate=False).decode("utf-8").strip()
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError("public_key is neither PEM nor base64 of PEM") from exc
    try:
        key = serialization.load_pem_public_key(raw.encode())
    except ValueError as exc:
        raise ValueError("public_key is not a valid PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey |
                      ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise ValueError("public_key type is not supported (use Ed25519, EC or RSA)")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError("RSA public keys must have at least 2048 bits")
    return raw


def algorithms_for_key(key: Any) -> set[str]:
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return {"EdDSA"}
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {{"secp256r1": "ES256", "secp384r1": "ES384",
                 "secp521r1": "ES512"}.get(key.curve.name, "?")}
    if isinstance(key, rsa.RSAPublicKey):
        return {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    return set()


def generate_keypair(out_dir: Path, kind: str = "ed25519") -> tuple[Path, Path]:
    """Write ``jwt-private.pem`` (0600) and ``jwt-public.pem`` into ``out_dir``."""
    priv: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "ed25519":
        priv = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif kind == "ec":
        priv = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError("key type must be ed25519, rsa or ec")
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / "jwt-private.pem", out_dir / "jwt-public.pem"
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    pub_path.write_bytes(priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def mint_token(private_key_pem: bytes, email: str, ttl_s: int = 3600,
               audience: str | None = None, scope: str | None = None,
               issuer: str | None = None, algorithm: str | None = None) -> str:
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if algorithm is None:
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            algorithm = "EdDSA"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = {"secp384r1": "ES384", "secp521r1": "ES512"}.get(key.curve.name,
                                                                         "ES256")
        else:
            algorithm = "RS256"
    now = int(time.time())
    claims: dict[str, Any] = {"email": email, "iat": now, "exp": now + ttl_s}
    if audience:
        claims["aud"] = audience
    if scope:
        claims["scope"] = scope
    if issuer:
        claims["iss"] = issuer
    return pyjwt.encode(claims, key, algorithm=algorithm)  # type: ignore[arg-type]


# -- principals ----------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    name: str
    method: str  # basic | jwt
    scopes: tuple[tuple[str, str], ...] | None = None
    """WLCG scopes ``(kind, path)``; None when the credential is unrestricted."""
    claims: Mapping[str, Any] = field(default_factory=dict)


_READ_SCOPES = {"storage.read", "storage.stage"}
_WRITE_SCOPES = {"storage.modify", "storage.create"}


def parse_scopes(scope: str | None) -> tuple[tuple[str, str], ...] | None:
    """Storage scopes of a ``scope`` claim, or None when it has none (unrestricted)."""
    if not scope:
        return None
    out = []
    for item in scope.split():
        kind, sep, path = item.partition(":")
        if kind in _READ_SCOPES | _WRITE_SCOPES:
            out.append((kind, "/" + path.strip("/") if sep else "/"))
    return tuple(out) if out else None


# -- JWT validation ---------------------------------------------------------------------
class JWTValidator:
    def __init__(self, users: Iterable[User], cfg: JWTConfig) -> None:
        self.cfg = cfg
        self.by_id: dict[str, tuple[User, Any]] = {}
        for u in users:
            if u.public_key:
                key = serialization.load_pem_public_key(u.public_key.encode())
                for ident in filter(None, (u.email, u.name)):
                    self.by_id.setdefault(ident, (u, key))
        self._jwks: Any = None
        if cfg.jwks_url:
            self._jwks = pyjwt.PyJWKClient(cfg.jwks_url, cache_keys=True, lifespan=600)

    def validate(self, token: str) -> Principal:
        try:
            header = pyjwt.get_unverified_header(token)
            unverified = pyjwt.decode(token, options={"verify_signature": False})
        except pyjwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc.__class__.__name__}") from exc
        alg = header.get("alg")
        if alg not in self.cfg.algorithms or alg not in ALLOWED_ALGORITHMS:
            raise AuthError(f"token algorithm {alg!r} not allowed")
        ident = unverified.get("email") or unverified.get("sub")
        if not isinstance(ident, str) or not ident:
            raise AuthError("token has neither email nor sub")
        found = self.by_id.get(ident)
        key: Any
        name = ident
        if found is not None:
            user, key = found
            name = user.name
        elif self._jwks is not None:
            try:
                key = self._jwks.get_signing_key_from_jwt(token).key
            except pyjwt.PyJWTError as exc:
                raise AuthError(f"no JWKS key for token: {exc.__class__.__name__}") from exc
        else:
            raise AuthError("unknown token user")
        if alg not in algorithms_for_key(key):
            raise AuthError(f"algorithm {alg} does not match the key type")
        options = {"require": ["exp"], "verify_aud": self.cfg.audience is not None}
        try:
            claims = pyjwt.decode(token, key, algorithms=[alg], audience=self.cfg.audience,
                                  issuer=self.cfg.issuer, leeway=self.cfg.leeway_s,
                                  options=options)  # type: ignore[arg-type]
        except pyjwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {exc.__class__.__name__}: {exc}") from exc
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat > time.time() + self.cfg.leeway_s:
            raise AuthError("token issued in the future")
        scope = claims.get("scope")
        return Principal(name, "jwt", parse_scopes(scope if isinstance(scope, str) else None),
                         claims)


def _looks_like_jwt(value: str) -> bool:
    parts = value.split(".")
    return len(parts) == 3 and value.startswith("eyJ") and all(parts[:2])


# -- the one authenticator ----------------------------------------------------------------
class Authenticator:
    """Turns request headers into a :class:`Principal` (or raises AuthError)."""

    def __init__(self, users: Iterable[User], jwt_cfg: JWTConfig) -> None:
        users = list(users)
        self.users = {u.name: u for u in users}
        self.passwords = PasswordChecker()
        self.jwt = JWTValidator(users, jwt_cfg)

    def authenticate(self, authorization: str | None, access_token: str | None) -> Principal:
        if access_token:
            return self.jwt.validate(access_token.strip())
        if not authorization:
            raise AuthError("no credentials")
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.jwt.validate(value.strip())
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError) as exc:
                raise AuthError("malformed basic credentials") from exc
            name, sep, password = decoded.partition(":")
            if not sep:
                raise AuthError("malformed basic credentials")
            if _looks_like_jwt(password):
                # clients that only speak Basic (davfs2, Finder, litmus) may send a
                # JWT as the password; the user name is ignored, the token decides
                return self.jwt.validate(password)
            user = self.users.get(name)
            if user is not None and user.password_hash is None:
                user = None
            if not self.passwords.verify(user, password):
                raise AuthError(f"bad password or unknown user {name!r}")
            return Principal(name, "basic")
        raise AuthError(f"unsupported authorization scheme {scheme!r}")


# -- permissions ---------------------------------------------------------------------------
_LEVEL = {"none": 0, "read": 1, "write": 2}


class Authorizer:
    """Permission rules + token scopes.  The most specific matching rule wins
    (the user's own rule beats ``*`` at the same path); no rule: write."""

    def __init__(self, rules: Iterable[Permission]) -> None:
        self.rules = list(rules)

    def level(self, principal: Principal, path: str) -> int:
        best: tuple[int, int, int] | None = None  # (depth, is_user, level)
        for r in self.rules:
            if r.user not in (principal.name, "*") or not is_within(path, r.path):
                continue
            depth = 0 if r.path == "/" else r.path.count("/")
            cand = (depth, 1 if r.user == principal.name else 0, _LEVEL[r.access])
            if best is None or cand[:2] > best[:2]:
                best = cand
        return 2 if best is None else best[2]

    def allowed(self, principal: Principal, path: str, need: str) -> bool:
        """May ``principal`` ``need`` ("read" or "write") at namespace ``path``?"""
        if self.level(principal, path) < _LEVEL[need]:
            return False
        if principal.scopes is None:
            return True
        kinds = _READ_SCOPES if need == "read" else _WRITE_SCOPES
        return any(k in kinds and is_within(path, p) for k, p in principal.scopes)

    def may_list_root(self, principal: Principal) -> bool:
        """The root collection is always listable by an authenticated user (it
        shows only site names); access to the sites is checked per site."""
        return True


def jwks_document(public_pems: Iterable[str]) -> dict[str, Any]:
    """A JWKS document for public keys (used by tests and by ``fedgate token``)."""
    keys = []
    for pem in public_pems:
        key = serialization.load_pem_public_key(pem.encode())
        jwk = json.loads(pyjwt.algorithms.get_default_algorithms()[
            sorted(algorithms_for_key(key))[0]].to_jwk(key))
        jwk["kid"] = hashlib.sha256(pem.encode()).hexdigest()[:16]
        keys.append(jwk)
    return {"keys": keys}
