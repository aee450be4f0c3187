"""Fixtures for the staging service: a real server on a loopback port (its event
loop runs under the blockbuster blocking-call detector), local sites in temp
dirs, a real HTTP webhook receiver, users with a password and with a JWT key."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from fedgate.auth import generate_keypair, hash_password
from fedgate.config import Config, build_config

# hidden test knobs (defaults follow the spec): short backoffs and leases
os.environ.setdefault("FEDGATE_WEBHOOK_BACKOFF_S", "0.05")
os.environ.setdefault("FEDGATE_TRANSFER_BACKOFF_S", "0.05")
os.environ.setdefault("FEDGATE_JOB_LEASE_S", "3")

WEBHOOK_SECRET = "test-webhook-secret"
PASSWORD = "alice-password"
_HASH = hash_password(PASSWORD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def staging_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    d = tmp_path_factory.mktemp("jwt")
    priv, pub = generate_keypair(d)
    return priv.read_bytes(), pub.read_text()


def make_doc(root: Path, pub_pem: str, port: int, **over: Any) -> dict[str, Any]:
    for s in ("site-a", "site-b"):
        (root / "sites" / s).mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "name": "test-001",
        "listen": {"webdav": "127.0.0.1:8000", "staging": f"127.0.0.1:{port}"},
        "state": f"sqlite:///{root / 'state.db'}",
        "sites": [{"name": s, "type": "local", "path": str(root / "sites" / s)}
                  for s in ("site-a", "site-b")],
        "users": [{"name": "alice", "password_hash": _HASH},
                  {"name": "ee", "email": "ee@process-project.eu", "public_key": pub_pem}],
        "webhooks": {"secret": WEBHOOK_SECRET, "allow_private_addresses": True},
        "transfers": {"workers": 4, "per_site_concurrency": 4, "retries": 3},
        "catalogue": {"refresh_interval_s": 3600},
    }
    doc.update(over)
    return doc


def make_config(root: Path, pub_pem: str, **over: Any) -> Config:
    return build_config(make_doc(root, pub_pem, free_port(), **over), data_dir=root / "data")


class StagingServer:
    """The staging app on a real port, its loop in a thread, blockbuster active."""

    def __init__(self, config: Config, workers: bool = True) -> None:
        self.config = config
        self.workers = workers
        host, port = config.listen.staging
        self.url = f"http://{host}:{port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.runner: Any = None

    def _run(self) -> None:
        from staging.app import start_site

        asyncio.set_event_loop(self.loop)
        try:
            self.runner = self.loop.run_until_complete(start_site(self.config,
                                                                  workers=self.workers))
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def start(self) -> StagingServer:
        self.thread.start()
        self.ready.wait(30)
        if self.error:
            raise self.error
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


@pytest.fixture
def blockbuster() -> Iterator[Any]:
    from blockbuster import BlockBuster

    bb = BlockBuster()
    # reading the kernel's urandom / logging to the terminal are not event-loop stalls
    bb.activate()
    try:
        yield bb
    finally:
        bb.deactivate()


@pytest.fixture
def config(tmp_path: Path, staging_keys: tuple[bytes, str]) -> Config:
    return make_config(tmp_path, staging_keys[1])


class BlockingLog(logging.Handler):
    """Collects logged BlockingErrors (raised in background tasks or handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "BlockingError":
            self.hits.append(f"{record.getMessage()}: {exc}")


@pytest.fixture
def blocking_log() -> Iterator[BlockingLog]:
    h = BlockingLog()
    logging.getLogger().addHandler(h)
    try:
        yield h
    finally:
        logging.getLogger().removeHandler(h)
    assert not h.hits, f"blocking calls on the event loop: {h.hits}"


def start_server(config: Config, workers: bool = True) -> StagingServer:
    return StagingServer(config, workers).start()


@pytest.fixture
def server(config: Config, blockbuster: Any, blocking_log: BlockingLog,
           ) -> Iterator[StagingServer]:
    srv = start_server(config)
    try:
        yield srv
    finally:
        srv.stop()


class Api:
    """A tiny client: requests with alice's basic credentials."""

    def __init__(self, url: str, auth: Any = ("alice", PASSWORD),
                 headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.s = requests.Session()
        self.s.auth = auth
        if headers:
            self.s.headers.update(headers)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.s.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        if body is not None:
            kw["data"] = json.dumps(body)
        return self.s.post(self.url + path, timeout=30, **kw)

    def delete(self, path: str) -> requests.Response:
        return self.s.delete(self.url + path, timeout=30)

    def wait(self, job_id: str, timeout: float = 60, until: tuple[str, ...] = (
            "succeeded", "failed", "cancelled")) -> dict[str, Any]:
        end = time.time() + timeout
        while True:
            r = self.get(f"/api/v1/copy/{job_id}")
            assert r.status_code == 200, r.text
            doc = r.json()
            if doc["status"] in until:
                return dict(doc)
            if time.time() > end:
                raise AssertionError(f"job {job_id} still {doc['status']}: {doc}")
            time.sleep(0.05)


@pytest.fixture
def api(server: StagingServer) -> Api:
    return Api(server.url)


def site_dir(config: Config, site: str) -> Path:
    s = config.site(site)
    assert s is not None
    return Path(s["path"])


# -- a real webhook receiver ------------------------------------------------------------------
class Receiver:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answers to give, in order; then 200
        self.redirect_to: str | None = None
        self.lock = threading.Lock()
        self.event = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                with receiver.lock:
                    receiver.requests.append({
                        "method": self.command, "path": self.path, "body": body,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "at": time.time()})
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect_to)
                else:
                    self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.event.set()

            do_POST = do_PUT = do_PATCH = do_GET = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/42"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.requests)} requests, wanted {n}")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()
