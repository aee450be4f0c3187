"""Shared fixtures.  Real servers live in tests/servers/ as pytest plugins."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from fedgate.auth import generate_keypair, hash_password, mint_token
from fedgate.config import Config, build_config
from fedgate.federation import Federation
from fedgate.store import open_store

pytest_plugins: list[str] = [
    "tests.servers.sshd",
    "tests.servers.seaweedfs",
    "tests.servers.gridftp",
]

ALICE_PW = "alice-secret-pw"
_HASH_CACHE: dict[str, str] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pw_hash(pw: str) -> str:
    if pw not in _HASH_CACHE:
        _HASH_CACHE[pw] = hash_password(pw)
    return _HASH_CACHE[pw]


@dataclass
class JWTUser:
    email: str
    private_pem: bytes
    public_pem: str

    def token(self, **kw: Any) -> str:
        return mint_token(self.private_pem, self.email, **kw)


@pytest.fixture(scope="session")
def jwt_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, JWTUser]:
    out = {}
    for kind, email in (("ed25519", "ee@process-project.eu"), ("ec", "ec@example.org"),
                        ("rsa", "rsa@example.org")):
        d = tmp_path_factory.mktemp(f"keys-{kind}")
        priv, pub = generate_keypair(d, kind)
        out[kind] = JWTUser(email, priv.read_bytes(), pub.read_text())
    return out


@dataclass
class Gateway:
    url: str
    config: Config
    federation: Federation
    server: Any
    port: int

    def session(self, user: str = "alice", password: str = ALICE_PW) -> requests.Session:
        s = requests.Session()
        s.auth = (user, password)
        return s

    def stop(self) -> None:
        self.server.stop()
        self.federation.close()
        self.federation.store.close()


def base_doc(sites: list[dict[str, Any]], jwt_keys: dict[str, JWTUser] | None = None,
             **extra: Any) -> dict[str, Any]:
    users: list[dict[str, Any]] = [{"name": "alice", "password_hash": pw_hash(ALICE_PW)},
                                   {"name": "bob", "password_hash": pw_hash("bob-pw")}]
    for u in (jwt_keys or {}).values():
        users.append({"name": u.email.split("@")[0], "email": u.email,
                      "public_key": base64.b64encode(u.public_pem.encode()).decode()})
    doc = {"name": "test", "sites": sites, "users": users}
    doc.update(extra)
    return doc


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Factory: start an in-process cheroot gateway for a config document."""
    from gateway.app import build_app
    from gateway.server import make_server, start_in_thread

    started: list[Gateway] = []

    def start(doc: dict[str, Any], data_dir: Path | None = None, port: int | None = None,
              probe: bool = True) -> Gateway:
        port = port or free_port()
        doc = dict(doc)
        doc.setdefault("listen", {"webdav": f"127.0.0.1:{port}"})
        cfg = build_config(doc, data_dir=data_dir or tmp_path / "gw-data")
        store = open_store(cfg.state)
        fed = Federation(cfg, store)
        if probe:
            for name in fed.sites:
                fed.status(name)
        server = make_server(cfg, build_app(fed), ("127.0.0.1", port))
        start_in_thread(server)
        gw = Gateway(f"http://127.0.0.1:{port}", cfg, fed, server, port)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        try:
            gw.stop()
        except Exception:
            pass


@pytest.fixture
def local_site(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "site-a"
    root.mkdir()
    return {"name": "site-a", "type": "local", "path": str(root)}


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway], local_site: dict[str, Any],
            tmp_path: Path, jwt_keys: dict[str, JWTUser]) -> Gateway:
    other = tmp_path / "site-b"
    other.mkdir()
    return start_gateway(base_doc([local_site, {"name": "site-b", "type": "local",
                                                "path": str(other)}], jwt_keys))


def run_in_thread(fn: Callable[[], Any]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t
