"""Copy jobs: request validation, the job document and its ONE state machine.

    queued --claim--> running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled
    running (lease expired, worker died) --claim--> running (restarted)

Every transition is one atomic store operation (``job_claim``, ``job_update``,
``job_finish``, ``job_cancel``): a worker owns a running job only while it
holds its lease, and only the owner can finish it, so a job is never run by
two workers at once and never finished twice.  A finished job's webhook
becomes due in the same store update.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fedgate.auth import Authorizer, Principal
from fedgate.namespace import PathError, join, parse_site_path
from fedgate.store.base import StateStore
from staging.errors import ApiError, bad_request, conflict, not_found, unprocessable

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
CHECKSUM_ALGORITHMS = ("sha256", "sha1", "md5")
WEBHOOK_METHODS = ("POST", "PUT", "PATCH")
REQUEST_KEYS = {"id", "from", "to", "webhook", "move", "overwrite", "recursive", "checksum"}
MAX_JOBS_PER_REQUEST = 1000
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def lease_seconds() -> float:
    """Worker lease on a running job (renewed every third of it)."""
    return float(os.environ.get("FEDGATE_JOB_LEASE_S", "30"))


@dataclass
class CopyRequest:
    """One validated copy request."""

    id: str | None
    src: str
    dst: str
    move: bool
    overwrite: bool
    recursive: bool
    checksum_alg: str | None
    expected: str | None
    webhook: dict[str, Any] | None

    def canonical(self) -> dict[str, Any]:
        return {"from": self.src, "to": self.dst, "move": self.move,
                "overwrite": self.overwrite, "recursive": self.recursive,
                "checksum": self.checksum_alg, "expected": self.expected,
                "webhook": self.webhook}

    def body_hash(self, user: str) -> str:
        doc = {"user": user, **self.canonical()}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _bool(item: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = item.get(key, default)
    if not isinstance(value, bool):
        raise bad_request(f"{where}.{key}: expected true or false", "invalid_field")
    return value


def _site_path(item: dict[str, Any], key: str, where: str, sites: set[str]) -> str:
    value = item.get(key)
    if value is None:
        raise bad_request(f"{where}: missing required field {key!r}", "missing_field")
    if not isinstance(value, str):
        raise bad_request(f"{where}.{key}: expected \"SITE:/PATH\"", "invalid_field")
    try:
        site, path = parse_site_path(value)
    except PathError as exc:
        raise bad_request(f"{where}.{key}: {exc}", "bad_path") from exc
    if site not in sites:
        raise unprocessable(f"{where}.{key}: no site named {site!r}", "unknown_site")
    return f"{site}:{path}"


def _webhook(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise bad_request(f"{where}.webhook: expected a URL or {{url, method, headers}}",
                          "invalid_field")
    extra = set(value) - {"url", "method", "headers"}
    if extra:
        raise bad_request(f"{where}.webhook: unknown field {sorted(extra)[0]!r}",
                          "invalid_field")
    url = value.get("url")
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}.webhook.url: expected a URL", "invalid_field")
    method = value.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in WEBHOOK_METHODS:
        raise bad_request(f"{where}.webhook.method: expected one of "
                          f"{', '.join(WEBHOOK_METHODS)}", "invalid_field")
    headers = value.get("headers") or {}
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "\n" not in k + v
            and "\r" not in k + v for k, v in headers.items()):
        raise bad_request(f"{where}.webhook.headers: expected a map of header strings",
                          "invalid_field")
    return {"url": url, "method": method.upper(), "headers": dict(headers)}


def parse_copy_requests(body: Any, sites: set[str]) -> list[CopyRequest]:
    """Validate the body of ``POST /api/v1/copy`` (one request or a list)."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise bad_request("expected a copy request or a non-empty list of them",
                          "invalid_body")
    if len(items) > MAX_JOBS_PER_REQUEST:
        raise ApiError(413, "too_many_requests_in_body",
                       f"at most {MAX_JOBS_PER_REQUEST} copy requests per call")
    out: list[CopyRequest] = []
    seen_ids: set[str] = set()
    for i, item in enumerate(items):
        where = f"[{i}]" if isinstance(body, list) else "request"
        if not isinstance(item, dict):
            raise bad_request(f"{where}: expected an object", "invalid_body")
        extra = set(item) - REQUEST_KEYS
        if extra:
            raise bad_request(f"{where}: unknown field {sorted(extra)[0]!r}", "invalid_field")
        job_id = item.get("id")
        if job_id is not None:
            if not isinstance(job_id, str) or not _ID_RE.match(job_id):
                raise bad_request(f"{where}.id: 1-128 characters of A-Z a-z 0-9 . _ : @ -, "
                                  "starting with a letter or digit", "invalid_field")
            if job_id in seen_ids:
                raise bad_request(f"{where}.id: {job_id!r} appears twice", "invalid_field")
            seen_ids.add(job_id)
        src = _site_path(item, "from", where, sites)
        dst = _site_path(item, "to", where, sites)
        if src == dst:
            raise unprocessable(f"{where}: 'from' and 'to' are the same", "same_path")
        if dst.endswith(":/"):
            raise unprocessable(f"{where}.to: cannot replace a site root", "bad_target")
        checksum = item.get("checksum")
        alg: str | None = None
        expected: str | None = None
        if isinstance(checksum, str):
            alg = checksum.lower()
        elif isinstance(checksum, dict) and len(checksum) == 1:
            alg, expected = next(iter(checksum.items()))
            alg = str(alg).lower()
            if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-fA-F]{16,128}",
                                                                 expected):
                raise bad_request(f"{where}.checksum: expected {{ALGORITHM: HEX}}",
                                  "invalid_field")
            expected = expected.lower()
        elif checksum is not None:
            raise bad_request(f"{where}.checksum: expected an algorithm name or "
                              "{ALGORITHM: HEX}", "invalid_field")
        if alg is not None and alg not in (*CHECKSUM_ALGORITHMS, "none"):
            raise bad_request(f"{where}.checksum: algorithm must be one of "
                              f"{', '.join(CHECKSUM_ALGORITHMS)} or none", "invalid_field")
        out.append(CopyRequest(
            id=job_id, src=src, dst=dst, move=_bool(item, "move", False, where),
            overwrite=_bool(item, "overwrite", True, where),
            recursive=_bool(item, "recursive", False, where), checksum_alg=alg,
            expected=expected, webhook=_webhook(item.get("webhook"), where)))
    return out


def check_permissions(req: CopyRequest, principal: Principal, authz: Authorizer) -> None:
    for value, need in ((req.src, "read"), (req.dst, "write")) + (
            ((req.src, "write"),) if req.move else ()):
        site, path = parse_site_path(value)
        if not authz.allowed(principal, join(site, path), need):
            raise ApiError(403, "forbidden", f"no {need} permission on {value}")


def new_job_doc(req: CopyRequest, user: str) -> dict[str, Any]:
    now = time.time()
    doc: dict[str, Any] = {
        "id": req.id or str(uuid.uuid4()), "user": user, "status": "queued",
        "created_at": now, "started_at": None, "finished_at": None,
        "from": req.src, "to": req.dst, "move": req.move, "overwrite": req.overwrite,
        "recursive": req.recursive, "checksum_alg": req.checksum_alg,
        "expected_checksum": req.expected, "body_hash": req.body_hash(user),
        "bytes_total": None, "bytes_done": 0, "files_total": None, "files_done": 0,
        "rate_bps": None, "attempts": 0, "checksum": None, "error": None,
        "resume_after": None, "target_checked": False, "target_created": False,
        "webhook": None,
    }
    if req.webhook:
        doc["webhook"] = {**req.webhook, "event_id": f"msg_{uuid.uuid4().hex}",
                          "state": "waiting", "next_at": None, "owner": None,
                          "lease_until": None, "deliveries": []}
    return doc


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def public_view(doc: dict[str, Any], base_url: str = "") -> dict[str, Any]:
    """The status document of SPEC 5.2 (no internal fields, no webhook headers)."""
    wh = doc.get("webhook")
    return {
        "id": doc["id"], "status": doc["status"], "from": doc["from"], "to": doc["to"],
        "move": doc["move"], "overwrite": doc["overwrite"], "recursive": doc["recursive"],
        "created_at": _iso(doc["created_at"]), "started_at": _iso(doc.get("started_at")),
        "finished_at": _iso(doc.get("finished_at")),
        "bytes_total": doc.get("bytes_total"), "bytes_done": doc.get("bytes_done") or 0,
        "files_total": doc.get("files_total"), "files_done": doc.get("files_done") or 0,
        "rate_bps": doc.get("rate_bps"), "attempts": doc.get("attempts") or 0,
        "checksum": doc.get("checksum"), "error": doc.get("error"),
        "cancel_requested": bool(doc.get("cancel_requested")),
        "status_url": f"{base_url}/api/v1/copy/{doc['id']}",
        "webhook": None if not wh else {
            "url": wh["url"], "method": wh.get("method", "POST"), "state": wh.get("state"),
            "deliveries": list(wh.get("deliveries") or [])},
    }


class JobService:
    """Submission, lookup, listing and cancellation (the API side of the machine)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.submitted = asyncio.Event()
        """Set whenever a job is queued, so that a local worker looks at once."""

    async def submit(self, reqs: list[CopyRequest], user: str) -> list[dict[str, Any]]:
        docs = [new_job_doc(r, user) for r in reqs]
        # refuse conflicting ids before creating anything
        for r, d in zip(reqs, docs, strict=True):
            if r.id:
                existing = await asyncio.to_thread(self.store.job_get, d["id"])
                if existing is not None and existing.get("body_hash") != d["body_hash"]:
                    raise conflict(f"job {d['id']!r} exists with another request",
                                   "id_conflict")
        out = []
        for d in docs:
            stored, created = await asyncio.to_thread(self.store.job_insert, d)
            if not created and stored.get("body_hash") != d["body_hash"]:
                raise conflict(f"job {d['id']!r} exists with another request", "id_conflict")
            out.append(stored)
        self.submitted.set()
        return out

    async def get(self, job_id: str, user: str) -> dict[str, Any]:
        doc = await asyncio.to_thread(self.store.job_get, job_id)
        if doc is None or doc.get("user") != user:
            raise not_found(f"no job {job_id!r}")
        return doc

    async def list(self, user: str, status: str | None, limit: int,
                   before: tuple[float, str] | None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.job_list, user=user, status=status,
                                       limit=limit, before=before)

    async def cancel(self, job_id: str, user: str) -> dict[str, Any]:
        await self.get(job_id, user)
        doc = await asyncio.to_thread(self.store.job_cancel, job_id)
        if doc is None:
            raise not_found(f"no job {job_id!r}")
        return doc
