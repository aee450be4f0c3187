"""Loading and validating the configuration file (SPEC section 2).

YAML or JSON (JSON is parsed by the YAML loader so that errors carry line
numbers too).  Unknown keys are errors naming the key and its line.  Secrets
(``${ENV}``, ``file:``) are resolved here, once.  The LOBCDER infrastructure
description of PROCESS D5.2 Appendix A is recognised and translated.
"""

from __future__ import annotations

import logging
import os
import secrets as pysecrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adaptors import ADAPTOR_TYPES, adaptor_class
from adaptors.base import COMMON_OPTIONS, OptionSpec
from fedgate.secrets import SecretError, resolve_secret

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem; the message names the key and line."""


# -- YAML with line numbers ---------------------------------------------------
class _LineDict(dict[str, Any]):
    lines: dict[str, int]
    line: int


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    out = _LineDict()
    out.lines = {}
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ConfigError(f"line {key_node.start_mark.line + 1}: keys must be strings")
        if key in out:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line(mapping: Any, key: str | None = None) -> str:
    if isinstance(mapping, _LineDict):
        if key is not None and key in mapping.lines:
            return f"line {mapping.lines[key]}"
        return f"line {mapping.line}"
    return "?"


# -- typed configuration ----------------------------------------------------------
@dataclass
class Listen:
    webdav: tuple[str, int] = ("127.0.0.1", 8000)
    staging: tuple[str, int] = ("127.0.0.1", 8002)
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass
class User:
    name: str
    password_hash: str | None = None
    email: str | None = None
    public_key: str | None = None  # PEM text


@dataclass
class Permission:
    user: str
    path: str
    access: str  # none | read | write


@dataclass
class JWTConfig:
    algorithms: list[str] = field(default_factory=lambda: ["EdDSA", "ES256", "RS256"])
    audience: str | None = None
    issuer: str | None = None
    jwks_url: str | None = None
    leeway_s: int = 30


@dataclass
class WebhookConfig:
    secret: str | None = None
    allow_private_addresses: bool = False


@dataclass
class TransferConfig:
    workers: int = 4
    per_site_concurrency: int = 4
    retries: int = 5
    checksum: str = "sha256"


@dataclass
class Config:
    name: str = "fedgate"
    listen: Listen = field(default_factory=Listen)
    state: str = ""
    secret_key: str | None = None
    sites: list[dict[str, Any]] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    permissions: list[Permission] = field(default_factory=list)
    jwt: JWTConfig = field(default_factory=JWTConfig)
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    transfers: TransferConfig = field(default_factory=TransferConfig)
    query_enabled: bool = True
    catalogue_refresh_s: int = 300
    data_dir: Path = field(default_factory=lambda: Path("fedgate-data"))
    source: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def site(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.sites if s["name"] == name), None)


# -- validation helpers -------------------------------------------------------------
def _check_keys(m: Any, allowed: set[str], where: str) -> None:
    if not isinstance(m, dict):
        raise ConfigError(f"{where} ({_line(m)}): expected a mapping")
    for key in m:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} ({_line(m, key)})")


def _typed(m: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str,
           default: Any = None, required: bool = False) -> Any:
    if key not in m or m[key] is None:
        if required:
            raise ConfigError(f"{where}: missing required key {key!r} ({_line(m)})")
        return default
    value = m[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{where}.{key} ({_line(m, key)}): expected int, got bool")
    if not isinstance(value, typ):
        name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ConfigError(f"{where}.{key} ({_line(m, key)}): expected {name}, "
                          f"got {type(value).__name__}")
    return value


def _secret(m: Mapping[str, Any], key: str, where: str, base: Path | None) -> str | None:
    value = _typed(m, key, str, where)
    if value is None:
        return None
    try:
        return resolve_secret(value, base)
    except SecretError as exc:
        raise ConfigError(f"{where}.{key} ({_line(m, key)}): {exc}") from exc


def parse_hostport(value: str, where: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


# -- sites ------------------------------------------------------------------------------
def _site(m: Any, where: str, base: Path | None) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise ConfigError(f"{where} ({_line(m)}): expected a mapping")
    site_type = _typed(m, "type", str, where, required=True)
    if site_type not in ADAPTOR_TYPES:
        raise ConfigError(f"{where}.type ({_line(m, 'type')}): unknown site type "
                          f"{site_type!r} (known: {', '.join(sorted(ADAPTOR_TYPES))})")
    try:
        cls = adaptor_class(site_type)
    except ImportError as exc:
        raise ConfigError(f"{where}.type ({_line(m, 'type')}): site type {site_type!r} is "
                          f"not available on this installation: {exc}") from exc
    specs: dict[str, OptionSpec] = {**COMMON_OPTIONS, **cls.OPTIONS}
    _check_keys(m, set(specs), where)
    out: dict[str, Any] = {}
    for key, spec in specs.items():
        if spec.secret:
            value = _secret(m, key, where, base)
            if value is None and spec.required:
                raise ConfigError(f"{where}: missing required key {key!r} ({_line(m)})")
        else:
            value = _typed(m, key, spec.type, where, spec.default, spec.required)
        if value is not None:
            out[key] = value
    from fedgate.namespace import valid_site_name

    if not valid_site_name(out["name"]):
        raise ConfigError(f"{where}.name ({_line(m, 'name')}): {out['name']!r} is not a valid "
                          "site name (one path segment, no '/', '\\', NUL, '.' or '..')")
    return out


# -- LOBCDER (PROCESS D5.2 Appendix A) ------------------------------------------------------
_LOBCDER_TYPES = {"sshfs": "sftp", "native": "local", "gridftp": "gridftp",
                  "s3": "s3", "sftp": "sftp", "local": "local"}
_LOBCDER_IGNORED_SITE_KEYS = {"expose", "caches", "volume", "namespace", "location"}
_LOBCDER_IGNORED_LOGIC = {"jupyter", "dispel", "nextcloud"}


def is_lobcder(doc: Mapping[str, Any]) -> bool:
    return "storageAdaptorContainers" in doc or "logicContainers" in doc


def translate_lobcder(doc: dict[str, Any], data_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """The LOBCDER description as a fedgate config document, plus warnings."""
    passthrough = _TOP_KEYS - {"name", "sites", "users"}
    _check_keys(doc, {"name", "namespace", "location", "storageAdaptorContainers",
                      "logicContainers"} | passthrough, "infrastructure")
    warnings: list[str] = []
    sites: list[Any] = []
    for i, c in enumerate(doc.get("storageAdaptorContainers") or []):
        where = f"storageAdaptorContainers[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(f"{where} ({_line(c)}): expected a mapping")
        lob_type = _typed(c, "type", str, where, required=True)
        if lob_type not in _LOBCDER_TYPES:
            raise ConfigError(f"{where}.type ({_line(c, 'type')}): unknown adaptor type "
                              f"{lob_type!r}")
        site = _LineDict({k: v for k, v in c.items() if k not in _LOBCDER_IGNORED_SITE_KEYS})
        site.lines = {k: v for k, v in getattr(c, "lines", {}).items()}
        site.line = getattr(c, "line", 0)
        site["type"] = _LOBCDER_TYPES[lob_type]
        if site["type"] == "local" and "path" not in site:
            vol = c.get("volume") or {}
            vol_name = vol.get("name") if isinstance(vol, dict) else None
            site["path"] = str(data_dir / "volumes" / str(vol_name or c.get("name")))
            Path(site["path"]).mkdir(parents=True, exist_ok=True)
        if site["type"] == "gridftp" and "url" not in site:
            # LOBCDER gave host/user/path(/password): GSI unless a password is given
            host = site.pop("host", None)
            if not host:
                raise ConfigError(f"{where} ({_line(c)}): a gridftp container needs host or url")
            port = site.pop("port", 2811)
            scheme = "ftp" if site.get("password") else "gsiftp"
            site["url"] = f"{scheme}://{host}:{port}/{str(site.pop('path', '/')).lstrip('/')}"
        if site["type"] == "sftp" and "host_key" not in site and "known_hosts" not in site:
            warnings.append(f"{where}: no host_key given; trusting the host key on first use "
                            "is NOT done: add host_key or known_hosts")
        for k in set(c) & _LOBCDER_IGNORED_SITE_KEYS:
            if k not in ("expose",):
                warnings.append(f"{where}.{k}: ignored (not used by fedgate)")
        sites.append(site)
    users: list[dict[str, Any]] = []
    query = False
    for i, c in enumerate(doc.get("logicContainers") or []):
        where = f"logicContainers[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(f"{where} ({_line(c)}): expected a mapping")
        kind = _typed(c, "type", str, where, required=True)
        if kind == "query":
            query = True
        elif kind == "webdav":
            user = _typed(c, "user", str, where, required=True)
            password = _typed(c, "pass", str, where, required=True)
            from fedgate.auth import hash_password

            users.append({"name": user, "password_hash": hash_password(
                resolve_secret(password))})
        elif kind == "webdav-jwt":
            members = _typed(c, "users", dict, where, required=True)
            for email, u in members.items():
                if not isinstance(u, dict) or "publicKey" not in u:
                    raise ConfigError(f"{where}.users.{email} ({_line(members, email)}): "
                                      "expected {name, publicKey}")
                users.append({"name": u.get("name") or email, "email": email,
                              "public_key": u["publicKey"]})
        elif kind in _LOBCDER_IGNORED_LOGIC:
            warnings.append(f"{where}: container type {kind!r} is ignored by fedgate")
        else:
            raise ConfigError(f"{where}.type ({_line(c, 'type')}): unknown container type "
                              f"{kind!r}")
    out = _LineDict({k: v for k, v in doc.items() if k in passthrough})
    out.lines = {k: v for k, v in getattr(doc, "lines", {}).items() if k in passthrough}
    out.line = getattr(doc, "line", 0)
    out.update({"name": doc.get("name") or "fedgate", "sites": sites, "users": users})
    if not query:
        out["_query_enabled"] = False
    return out, warnings


# -- top level ------------------------------------------------------------------------------------
_TOP_KEYS = {"name", "listen", "state", "secret_key", "sites", "users", "permissions", "jwt",
             "webhooks", "transfers", "catalogue", "data_dir"}


def load_config(path: str | Path | None = None, *, text: str | None = None,
                data_dir: str | Path | None = None) -> Config:
    """Load and validate a config file (or ``text``).  Raises :class:`ConfigError`."""
    base: Path | None = None
    if text is None:
        if path is None:
            raise ConfigError("no configuration given")
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {p}: {exc.strerror}") from exc
        base = p.resolve().parent
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"not valid YAML/JSON at {where}: {exc.problem}") from exc
    if not isinstance(doc, dict):
        raise ConfigError("the configuration must be a mapping at the top level")
    return build_config(doc, base=base, source=Path(path) if path else None, data_dir=data_dir)


def build_config(doc: dict[str, Any], *, base: Path | None = None, source: Path | None = None,
                 data_dir: str | Path | None = None) -> Config:
    cfg = Config(source=source)
    dd = data_dir or doc.get("data_dir") or (base / "fedgate-data" if base else "fedgate-data")
    cfg.data_dir = Path(dd).expanduser().resolve()
    if is_lobcder(doc):
        doc, cfg.warnings = translate_lobcder(doc, cfg.data_dir)
        cfg.query_enabled = doc.pop("_query_enabled", True)
    _check_keys(doc, _TOP_KEYS, "config")
    cfg.name = _typed(doc, "name", str, "config", "fedgate")
    listen = doc.get("listen") or {}
    if listen:
        _check_keys(listen, {"webdav", "staging", "tls"}, "listen")
        if "webdav" in listen:
            cfg.listen.webdav = parse_hostport(listen["webdav"], f"listen.webdav "
                                               f"({_line(listen, 'webdav')})")
        if "staging" in listen:
            cfg.listen.staging = parse_hostport(listen["staging"], f"listen.staging "
                                                f"({_line(listen, 'staging')})")
        tls = listen.get("tls")
        if tls:
            _check_keys(tls, {"cert", "key"}, "listen.tls")
            cfg.listen.tls_cert = _typed(tls, "cert", str, "listen.tls", required=True)
            cfg.listen.tls_key = _typed(tls, "key", str, "listen.tls", required=True)
    cfg.state = _secret(doc, "state", "config", base) or f"sqlite:///{cfg.data_dir / 'state.db'}"
    if not cfg.state.startswith(("sqlite:///", "mongodb://", "mongodb+srv://")):
        raise ConfigError(f"config.state ({_line(doc, 'state')}): expected sqlite:///PATH or "
                          "mongodb://...")
    cfg.secret_key = _secret(doc, "secret_key", "config", base)

    sites = _typed(doc, "sites", list, "config", [])
    seen: set[str] = set()
    for i, s in enumerate(sites):
        site = _site(s, f"sites[{i}]", base)
        if site["name"] in seen:
            raise ConfigError(f"sites[{i}].name ({_line(s, 'name')}): duplicate site "
                              f"{site['name']!r}")
        seen.add(site["name"])
        cfg.sites.append(site)

    for i, u in enumerate(_typed(doc, "users", list, "config", [])):
        where = f"users[{i}]"
        _check_keys(u, {"name", "password_hash", "email", "public_key"}, where)
        user = User(name=_typed(u, "name", str, where, required=True),
                    password_hash=_secret(u, "password_hash", where, base),
                    email=_typed(u, "email", str, where),
                    public_key=_secret(u, "public_key", where, base))
        if user.password_hash is None and user.public_key is None:
            raise ConfigError(f"{where} ({_line(u)}): a user needs password_hash or public_key")
        if user.public_key is not None:
            from fedgate.auth import load_public_key

            try:
                user.public_key = load_public_key(user.public_key)
            except ValueError as exc:
                raise ConfigError(f"{where}.public_key ({_line(u, 'public_key')}): {exc}") from exc
        cfg.users.append(user)

    for i, p in enumerate(_typed(doc, "permissions", list, "config", [])):
        where = f"permissions[{i}]"
        _check_keys(p, {"user", "path", "access"}, where)
        access = _typed(p, "access", str, where, required=True)
        if access not in ("none", "read", "write"):
            raise ConfigError(f"{where}.access ({_line(p, 'access')}): expected none, read "
                              "or write")
        ppath = _typed(p, "path", str, where, required=True)
        if not ppath.startswith("/"):
            raise ConfigError(f"{where}.path ({_line(p, 'path')}): must start with '/'")
        cfg.permissions.append(Permission(_typed(p, "user", str, where, required=True),
                                          "/" + ppath.strip("/"), access))

    jwt = doc.get("jwt") or {}
    if jwt:
        _check_keys(jwt, {"algorithms", "audience", "issuer", "jwks_url", "leeway_s"}, "jwt")
        algs = _typed(jwt, "algorithms", list, "jwt", cfg.jwt.algorithms)
        from fedgate.auth import ALLOWED_ALGORITHMS

        for a in algs:
            if a not in ALLOWED_ALGORITHMS:
                raise ConfigError(f"jwt.algorithms ({_line(jwt, 'algorithms')}): {a!r} is not "
                                  f"allowed (allowed: {', '.join(sorted(ALLOWED_ALGORITHMS))})")
        cfg.jwt = JWTConfig(algorithms=list(algs), audience=_typed(jwt, "audience", str, "jwt"),
                            issuer=_typed(jwt, "issuer", str, "jwt"),
                            jwks_url=_typed(jwt, "jwks_url", str, "jwt"),
                            leeway_s=_typed(jwt, "leeway_s", int, "jwt", 30))
    wh = doc.get("webhooks") or {}
    if wh:
        _check_keys(wh, {"secret", "allow_private_addresses"}, "webhooks")
        cfg.webhooks = WebhookConfig(secret=_secret(wh, "secret", "webhooks", base),
                                     allow_private_addresses=_typed(
                                         wh, "allow_private_addresses", bool, "webhooks", False))
    tr = doc.get("transfers") or {}
    if tr:
        _check_keys(tr, {"workers", "per_site_concurrency", "retries", "checksum"}, "transfers")
        cfg.transfers = TransferConfig(
            workers=_typed(tr, "workers", int, "transfers", 4),
            per_site_concurrency=_typed(tr, "per_site_concurrency", int, "transfers", 4),
            retries=_typed(tr, "retries", int, "transfers", 5),
            checksum=_typed(tr, "checksum", str, "transfers", "sha256"))
        if cfg.transfers.checksum not in ("sha256", "md5", "adler32", "sha1", "none"):
            raise ConfigError(f"transfers.checksum ({_line(tr, 'checksum')}): expected sha256, "
                              "sha1, md5, adler32 or none")
    cat = doc.get("catalogue") or {}
    if cat:
        _check_keys(cat, {"refresh_interval_s"}, "catalogue")
        cfg.catalogue_refresh_s = _typed(cat, "refresh_interval_s", int, "catalogue", 300)
    for w in cfg.warnings:
        log.warning("config: %s", w)
    return cfg


def demo_config(data_dir: Path) -> tuple[Config, str | None]:
    """The demo infrastructure: sites ``site-a`` and ``site-b`` under ``data_dir``.

    Returns the config and, on first start only, the generated password of the
    user ``demo`` (its hash is kept in ``data_dir/demo-user.hash``).
    """
    from fedgate.auth import hash_password

    data_dir = data_dir.expanduser().resolve()
    for s in ("site-a", "site-b"):
        (data_dir / "sites" / s).mkdir(parents=True, exist_ok=True)
    hash_file = data_dir / "demo-user.hash"
    password: str | None = None
    if not hash_file.exists():
        password = pysecrets.token_urlsafe(12)
        hash_file.write_text(hash_password(password) + "\n", encoding="utf-8")
        hash_file.chmod(0o600)
        readme = data_dir / "sites" / "site-a" / "README.txt"
        readme.write_text("Welcome to fedgate. This file lives on site-a.\n", encoding="utf-8")
    doc = {
        "name": "fedgate-demo",
        "listen": {"webdav": os.environ.get("FEDGATE_DEMO_WEBDAV", "127.0.0.1:8000"),
                   "staging": os.environ.get("FEDGATE_DEMO_STAGING", "127.0.0.1:8002")},
        "sites": [{"name": s, "type": "local", "path": str(data_dir / "sites" / s)}
                  for s in ("site-a", "site-b")],
        "users": [{"name": "demo", "password_hash": hash_file.read_text().strip()}],
    }
    return build_config(doc, data_dir=data_dir), password
