"""HTTP handlers of the staging API: thin, typed, no error mapping (that is the
one middleware in staging/errors.py)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

from aiohttp import web

from fedgate.auth import Principal
from fedgate.namespace import join, normalize, parse_site_path
from staging.errors import ApiError, bad_request, not_found, unprocessable
from staging.jobs import STATUSES, check_permissions, parse_copy_requests, public_view
from staging.openapi import openapi_document
from staging.services import SERVICES, Services
from staging.webhooks import UnsafeDestination, resolve_destination

routes = web.RouteTableDef()


def svc(request: web.Request) -> Services:
    return request.app[SERVICES]


async def principal_of(request: web.Request) -> Principal:
    s = svc(request)
    authorization = request.headers.get("Authorization")
    token = request.headers.get("x-access-token")
    if not authorization and not token:
        raise ApiError(401, "unauthorized", "authentication required")
    return await asyncio.to_thread(s.authn.authenticate, authorization, token)


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers, content_type="application/json",
                        text=json.dumps(data))


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer", "invalid_parameter") from None
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}", "invalid_parameter")
    return value


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None, n: int) -> list[Any] | None:
    if raw is None:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request("invalid cursor", "invalid_parameter") from None
    if not isinstance(values, list) or len(values) != n:
        raise bad_request("invalid cursor", "invalid_parameter")
    return values


def next_link(request: web.Request, cursor: str) -> str:
    url = request.url.update_query({"cursor": cursor})
    return f'<{url.path_qs}>; rel="next"'


def visible(s: Services, principal: Principal, row: dict[str, Any]) -> bool:
    return s.authz.allowed(principal, join(row["site"], row["path"]), "read")


# -- health -----------------------------------------------------------------------------
@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    s = svc(request)
    out: dict[str, Any] = {"status": "ok", "store": "ok", "sites": {}}
    try:
        await asyncio.to_thread(s.store.ping)
    except Exception as exc:
        out.update(status="unavailable", store=f"error: {exc.__class__.__name__}")
    statuses = await asyncio.gather(*(asyncio.to_thread(s.federation.status, name)
                                      for name in s.federation.sites))
    for name, st in zip(s.federation.sites, statuses, strict=True):
        out["sites"][name] = {"ok": st.ok, "message": st.message}
    return json_response(out, 200 if out["status"] == "ok" else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    s = svc(request)
    counts = await asyncio.to_thread(s.store.job_counts)
    entries = await asyncio.to_thread(s.store.catalogue_count)
    return web.Response(text=s.metrics.render(counts, entries),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


# -- where files are ---------------------------------------------------------------------
@routes.get("/api/v1/list")
async def list_files(request: web.Request) -> web.Response:
    s = svc(request)
    principal = await principal_of(request)
    site = request.query.get("site")
    if site is not None and site not in s.federation.sites:
        raise not_found(f"no site named {site!r}")
    prefix = request.query.get("prefix")
    if prefix is not None:
        prefix = normalize(prefix if prefix.startswith("/") else "/" + prefix)
    limit = int_param(request, "limit", 1000, 1, 10000)
    cur = decode_cursor(request.query.get("cursor"), 3)
    after = (str(cur[0]), str(cur[1]), str(cur[2])) if cur else None
    rows = await asyncio.to_thread(s.store.catalogue_page, site=site, prefix=prefix,
                                   limit=limit, after=after)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if visible(s, principal, row):
            out.setdefault(row["basename"], []).append(s.catalogue.entry(row))
    headers = {}
    if len(rows) == limit:
        last = rows[-1]
        headers["Link"] = next_link(request, encode_cursor(
            [last["basename"], last["site"], last["path"]]))
    return json_response(out, headers=headers)


async def _find(request: web.Request, **query: Any) -> web.Response:
    s = svc(request)
    principal = await principal_of(request)
    limit = int_param(request, "limit", 1000, 1, 10000)
    rows = await asyncio.to_thread(s.store.catalogue_find, limit=limit, **query)
    entries = [s.catalogue.entry(r) for r in rows if visible(s, principal, r)]
    if not entries:
        raise not_found("no file matches")
    return json_response(entries)


@routes.get("/api/v1/find/{name}")
async def find_name(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not name or "/" in name or name in (".", ".."):
        raise bad_request("a base name has no '/'", "bad_path")
    site = request.query.get("site")
    return await _find(request, name=name, site=site)


@routes.get("/api/v1/find")
async def find_query(request: web.Request) -> web.Response:
    q = request.query
    glob, path, name, site = q.get("glob"), q.get("path"), q.get("name"), q.get("site")
    if path is not None:
        if ":" in path and not path.startswith("/"):
            site, path = parse_site_path(path)
        else:
            path = normalize(path if path.startswith("/") else "/" + path)
    if glob is None and path is None and name is None:
        raise bad_request("give one of glob, path or name", "missing_parameter")
    if glob is not None and not glob:
        raise bad_request("empty glob", "invalid_parameter")
    return await _find(request, name=name, glob=glob, path=path, site=site)


@routes.post("/api/v1/refresh")
async def refresh(request: web.Request) -> web.Response:
    s = svc(request)
    await principal_of(request)
    site = request.query.get("site")
    if site is not None:
        if site not in s.federation.sites:
            raise not_found(f"no site named {site!r}")
        results = {site: await s.catalogue.crawl(site)}
    else:
        results = await s.catalogue.crawl_all()
    for name, r in results.items():
        if r.get("status") == "stale":
            s.metrics.site_error(name, "crawl")
    return json_response({"sites": results}, 200)


# -- copy jobs --------------------------------------------------------------------------------
@routes.post("/api/v1/copy")
async def submit_copy(request: web.Request) -> web.Response:
    s = svc(request)
    principal = await principal_of(request)
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON", "invalid_json") from None
    reqs = parse_copy_requests(body, set(s.federation.sites))
    for r in reqs:
        check_permissions(r, principal, s.authz)
    for r in reqs:
        if r.webhook:
            try:
                await resolve_destination(r.webhook["url"],
                                          s.config.webhooks.allow_private_addresses)
            except UnsafeDestination as exc:
                raise unprocessable(f"webhook: {exc}", "unsafe_webhook") from None
    docs = await s.jobs.submit(reqs, principal.name)
    base = base_url(request)
    out = [{"id": d["id"], "status": d["status"],
            "status_url": f"{base}/api/v1/copy/{d['id']}"} for d in docs]
    return json_response(out, 202)


@routes.get("/api/v1/copy")
async def list_jobs(request: web.Request) -> web.Response:
    s = svc(request)
    principal = await principal_of(request)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise bad_request(f"status must be one of {', '.join(STATUSES)}", "invalid_parameter")
    limit = int_param(request, "limit", 100, 1, 1000)
    cur = decode_cursor(request.query.get("cursor"), 2)
    before: tuple[float, str] | None = None
    if cur is not None:
        try:
            before = (float(cur[0]), str(cur[1]))
        except (TypeError, ValueError):
            raise bad_request("invalid cursor", "invalid_parameter") from None
    docs = await s.jobs.list(principal.name, status, limit, before)
    base = base_url(request)
    headers = {}
    if len(docs) == limit:
        headers["Link"] = next_link(request, encode_cursor([docs[-1]["created_at"],
                                                            docs[-1]["id"]]))
    return json_response([public_view(d, base) for d in docs], headers=headers)


@routes.get("/api/v1/copy/{id}")
async def get_job(request: web.Request) -> web.Response:
    s = svc(request)
    principal = await principal_of(request)
    doc = await s.jobs.get(request.match_info["id"], principal.name)
    return json_response(public_view(doc, base_url(request)))


@routes.delete("/api/v1/copy/{id}")
async def cancel_job(request: web.Request) -> web.Response:
    s = svc(request)
    principal = await principal_of(request)
    doc = await s.jobs.cancel(request.match_info["id"], principal.name)
    if doc["status"] == "running" and s.pool is not None:
        s.pool.cancel_local(doc["id"])
    if doc["status"] == "cancelled" and s.dispatcher is not None:
        s.dispatcher.wake.set()
    return json_response(public_view(doc, base_url(request)),
                         202 if doc["status"] == "running" else 200)


# -- infrastructure -----------------------------------------------------------------------------
@routes.get("/api/v1/infrastructure")
async def infrastructure(request: web.Request) -> web.Response:
    s = svc(request)
    await principal_of(request)
    cfg = s.config
    wh, wp = cfg.listen.webdav
    sh, sp = cfg.listen.staging
    out: list[dict[str, Any]] = [
        {"type": "webdav", "name": f"{cfg.name}-webdav", "ports": [wp], "host": wh,
         "auth": ["basic", "bearer", "x-access-token"]},
        {"type": "query", "name": f"{cfg.name}-query", "ports": [sp], "host": sh,
         "enabled": cfg.query_enabled},
        {"type": "token", "header": "x-access-token"},
    ]
    statuses = await asyncio.gather(*(asyncio.to_thread(s.federation.status, name)
                                      for name in s.federation.sites))
    for (name, adaptor), st in zip(s.federation.sites.items(), statuses, strict=True):
        d = adaptor.describe()
        out.append({"type": "site", "name": name, "site_type": d.get("type"),
                    "host": d.get("host"), "port": d.get("port"), "mount": d.get("mount"),
                    "read_only": adaptor.read_only, "status": "ok" if st.ok else "unavailable",
                    "message": st.message, "checked_at": time.time() - (
                        time.monotonic() - st.checked_at)})
    return json_response(out)
