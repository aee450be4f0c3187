"""Webhook delivery (SPEC 5.3) and the safety rules of outbound calls (SPEC 5.4).

- Standard Webhooks headers: ``webhook-id`` (one per event, the same on every
  retry), ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of
  "{id}.{timestamp}.{body}">`` with one ``v1,`` value per configured secret
  (several while rotating: ``webhooks.secret`` may hold space-separated secrets).
- Delivery state lives in the job document (``webhook.state``, ``next_at``,
  ``deliveries``), so retries survive restarts; every attempt is recorded.
- A delivery without a 2xx answer within 10 s is retried with exponential
  backoff and jitter: 8 attempts over about 7.5 hours by default.
- Destinations: http(s) only; the host is resolved ONCE, every address is
  checked (loopback, private, link-local, multicast, reserved, IPv4-mapped
  forms of those are refused unless ``allow_private_addresses``), and the
  connection goes to exactly the checked address.  Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import secrets as pysecrets
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from fedgate.config import Config
from fedgate.store.base import StateStore
from staging.jobs import public_view

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0


def backoff_base_seconds() -> float:
    """Delay before the 2nd attempt (x4 each further attempt).  Hidden test knob."""
    return float(os.environ.get("FEDGATE_WEBHOOK_BACKOFF_S", "5"))


def max_attempts() -> int:
    return max(8, int(os.environ.get("FEDGATE_WEBHOOK_MAX_ATTEMPTS", "8")))


def next_delay(attempt: int) -> float:
    """Delay after failed attempt number ``attempt`` (1-based), with +-20% jitter:
    5 s, 20 s, 80 s, 5.3 min, 21 min, 85 min, 5.7 h with the default base."""
    return backoff_base_seconds() * (4 ** (attempt - 1)) * random.uniform(0.8, 1.2)  # noqa: S311


# -- signing -------------------------------------------------------------------------------
def sign(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    payload = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(s.encode("utf-8"), payload,
                                          hashlib.sha256).digest()).decode()
        for s in secrets)


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """Check a Standard Webhooks signature (for receivers and tests)."""
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    if not msg_id or not ts.isdigit() or abs(time.time() - int(ts)) > tolerance_s:
        return False
    expected = sign([secret], msg_id, int(ts), body)
    return any(hmac.compare_digest(expected, v) for v in
               headers.get("webhook-signature", "").split())


def load_secrets(config: Config) -> list[str]:
    """Configured secret(s), else one generated once into the data dir (0600)."""
    if config.webhooks.secret:
        return config.webhooks.secret.split()
    path = Path(config.data_dir) / "webhook.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(pysecrets.token_urlsafe(32) + "\n")
        except FileExistsError:
            pass
    return path.read_text(encoding="utf-8").split()


# -- destination safety ------------------------------------------------------------------
class UnsafeDestination(ValueError):
    """The webhook URL may not be called (scheme, host or address)."""


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip.teredo is not None:
            ip = ip.teredo[1]
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified or not ip.is_global)


async def resolve_destination(url: str, allow_private: bool) -> tuple[URL, list[str]]:
    """Validate ``url`` and resolve its host once; return the URL and the checked
    addresses.  Raises :class:`UnsafeDestination`."""
    try:
        u = URL(url)
    except (ValueError, TypeError) as exc:
        raise UnsafeDestination("not a valid URL") from exc
    if u.scheme not in ("http", "https"):
        raise UnsafeDestination("webhook URLs must be http or https")
    if not u.host or u.user or u.password:
        raise UnsafeDestination("webhook URLs need a host and no credentials")
    port = u.port or (443 if u.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(u.host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeDestination(f"cannot resolve {u.host}") from exc
    addrs = sorted({str(info[4][0]) for info in infos})
    if not addrs:
        raise UnsafeDestination(f"cannot resolve {u.host}")
    if not allow_private:
        for a in addrs:
            if not address_allowed(ipaddress.ip_address(a.split("%")[0])):
                raise UnsafeDestination(f"{u.host} resolves to a non-public address ({a}); "
                                        "set webhooks.allow_private_addresses to allow it")
    return u, addrs


class PinnedResolver(AbstractResolver):
    """Answers with the addresses already checked, so the connection goes exactly
    where the check said (no second DNS lookup to rebind)."""

    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        out: list[ResolveResult] = []
        for a in self.addrs:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            out.append(ResolveResult(hostname=host, host=a, port=port, family=fam, proto=0,
                                     flags=socket.AI_NUMERICHOST))
        return out

    async def close(self) -> None:
        return None


# -- the dispatcher ---------------------------------------------------------------------
def _iso_now() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


def event_body(doc: dict[str, Any], base_url: str = "") -> bytes:
    """The event JSON; stable across retries (no delivery log inside)."""
    job = public_view(doc, base_url)
    if job["webhook"] is not None:
        job["webhook"] = {"url": job["webhook"]["url"], "method": job["webhook"]["method"]}
    return json.dumps({"type": f"copy.{doc['status']}", "id": doc["id"], "job": job},
                      separators=(",", ":")).encode()


class WebhookDispatcher:
    """Claims due deliveries from the store and sends them (several processes may
    run one each; the delivery lease keeps an attempt from being sent twice)."""

    def __init__(self, config: Config, store: StateStore, secrets: list[str],
                 on_attempt: Callable[[str], None] | None = None,
                 concurrency: int = 16) -> None:
        self.config = config
        self.store = store
        self.secrets = secrets
        self.owner = f"webhooks-{uuid.uuid4().hex[:12]}"
        self.wake = asyncio.Event()
        self.on_attempt = on_attempt
        self.sem = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        host, port = config.listen.staging
        scheme = "https" if config.listen.tls_cert else "http"
        self.base_url = f"{scheme}://{host}:{port}"

    async def run(self) -> None:
        while True:
            try:
                doc = await asyncio.to_thread(self.store.webhook_claim, self.owner,
                                              TIMEOUT_S * 3)
            except Exception:
                log.exception("webhooks: claiming a delivery failed")
                doc = None
            if doc is None:
                self.wake.clear()
                with _suppress_timeout():
                    await asyncio.wait_for(self.wake.wait(), 0.5)
                continue
            await self.sem.acquire()
            task = asyncio.create_task(self._deliver(doc))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.sem.release()

    async def _deliver(self, doc: dict[str, Any]) -> None:
        wh = doc["webhook"]
        attempt = len(wh.get("deliveries") or []) + 1
        body = event_body(doc, self.base_url)
        status_code: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            status_code = await self.send(wh, body)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except UnsafeDestination as exc:
            error = f"refused: {exc}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"[:300]
        except Exception as exc:
            log.exception("webhooks: delivery of %s crashed", doc["id"])
            error = f"internal error: {exc.__class__.__name__}"
        ok = error is None
        delivery = {"attempt": attempt, "at": _iso_now(), "status_code": status_code,
                    "error": error, "duration_ms": int((time.monotonic() - started) * 1000)}
        if ok:
            state, next_at = "delivered", None
        elif attempt >= max_attempts():
            state, next_at = "failed", None
        else:
            state, next_at = "pending", time.time() + next_delay(attempt)
        if self.on_attempt is not None:
            self.on_attempt("delivered" if ok else "failed")
        if next_at is not None:  # wake up for the retry rather than at the next poll
            asyncio.get_running_loop().call_later(max(0.0, next_at - time.time()) + 0.02,
                                                  self.wake.set)
        try:
            await asyncio.to_thread(self.store.webhook_record, doc["id"], self.owner,
                                    delivery, state, next_at)
        except Exception:
            log.exception("webhooks: recording the delivery of %s failed", doc["id"])
        log.info("webhook %s for job %s attempt %d: %s", wh.get("event_id"), doc["id"],
                 attempt, "ok" if ok else error)

    async def send(self, wh: dict[str, Any], body: bytes) -> int:
        url, addrs = await resolve_destination(wh["url"],
                                               self.config.webhooks.allow_private_addresses)
        ts = int(time.time())
        msg_id = wh["event_id"]
        headers = {k: v for k, v in (wh.get("headers") or {}).items()
                   if not k.lower().startswith("webhook-")
                   and k.lower() not in ("content-type", "content-length", "host")}
        headers.update({"content-type": "application/json", "webhook-id": msg_id,
                        "webhook-timestamp": str(ts),
                        "webhook-signature": sign(self.secrets, msg_id, ts, body),
                        "user-agent": "fedgate-webhooks/1"})
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(addrs), use_dns_cache=False,
                                         force_close=True)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                session.request(wh.get("method", "POST"), url, data=body, headers=headers,
                                allow_redirects=False) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is TimeoutError
