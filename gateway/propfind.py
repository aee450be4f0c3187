"""A fast PROPFIND for the common case.

wsgidav builds an element tree per property and asks the lock and property
managers once per resource; for a 10,000-entry folder that is seconds.  This
path answers Depth 0/1 ``allprop`` and named-``prop`` requests from ONE
back-end listing, ONE dead-property query and ONE lock query, writing the
multistatus XML directly.  Anything unusual (``propname``, ``include``, If
headers, locks in the subtree, XML it does not understand) goes to wsgidav's
own handler, which stays the reference.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from defusedxml.ElementTree import fromstring as safe_fromstring

from adaptors.base import Entry
from gateway.resources import FEDGATE_NS, FileResource, RootCollection, SiteCollection

if TYPE_CHECKING:
    from gateway.provider import FederatedProvider

DAV = "{DAV:}"
SUPPORTED_LOCK = (
    "<D:supportedlock><D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype>"
    "<D:write/></D:locktype></D:lockentry><D:lockentry><D:lockscope><D:shared/>"
    "</D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry></D:supportedlock>")
LIVE = ("creationdate", "displayname", "getcontentlength", "getcontenttype", "getetag",
        "getlastmodified", "resourcetype", "supportedlock", "lockdiscovery")


class Unsupported(Exception):
    """The request is not one the fast path answers; use wsgidav's handler."""


def parse_request(body: bytes) -> list[str] | None:
    """None for allprop, else the requested property names in Clark notation."""
    if not body.strip():
        return None
    try:
        root = safe_fromstring(body)
    except (ET.ParseError, ValueError) as exc:
        raise Unsupported from exc
    if root.tag != DAV + "propfind" or len(root) != 1:
        raise Unsupported
    child = root[0]
    if child.tag == DAV + "allprop":
        return None
    if child.tag == DAV + "prop":
        return [el.tag for el in child]
    raise Unsupported


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class _Row:
    __slots__ = ("entry", "href", "is_dir", "name", "path", "status")

    def __init__(self, href: str, path: str, entry: Entry, name: str,
                 status: str | None = None) -> None:
        self.href = href
        self.path = path
        self.entry = entry
        self.is_dir = entry.is_dir
        self.name = name
        self.status = status  # fedgate:site-status, for site roots


def _live(row: _Row, name: str) -> str | None:
    e = row.entry
    if name == "resourcetype":
        return "<D:resourcetype><D:collection/></D:resourcetype>" if row.is_dir else \
            "<D:resourcetype/>"
    if name == "displayname":
        return f"<D:displayname>{escape(row.name)}</D:displayname>"
    if name == "supportedlock":
        return SUPPORTED_LOCK
    if name == "lockdiscovery":
        return "<D:lockdiscovery/>"
    ts = int(e.mtime.timestamp()) if e.mtime is not None else None
    if name == "getlastmodified":
        return None if ts is None else f"<D:getlastmodified>{_dates(ts)[0]}</D:getlastmodified>"
    if name == "creationdate":
        return None if ts is None else f"<D:creationdate>{_dates(ts)[1]}</D:creationdate>"
    if row.is_dir:
        return None
    if name == "getcontentlength":
        return f"<D:getcontentlength>{e.size}</D:getcontentlength>"
    if name == "getcontenttype":
        ctype = e.content_type or _mime(e.name)
        return f"<D:getcontenttype>{escape(ctype)}</D:getcontenttype>"
    if name == "getetag":
        if e.etag:
            tag = e.etag
        else:
            us = int(e.mtime.timestamp() * 1e6) if e.mtime else 0
            tag = f"{e.size:x}-{us:x}"
        return f'<D:getetag>"{escape(tag)}"</D:getetag>'
    return None


def _status_xml(row: _Row) -> str:
    return (f'<F:site-status xmlns:F="{FEDGATE_NS[1:-1]}">{escape(row.status or "")}'
            "</F:site-status>")


_DATE_CACHE: dict[int, tuple[str, str]] = {}
_MIME_CACHE: dict[str, str] = {}


def _dates(ts: int) -> tuple[str, str]:
    d = _DATE_CACHE.get(ts)
    if d is None:
        if len(_DATE_CACHE) > 65536:
            _DATE_CACHE.clear()
        d = _DATE_CACHE[ts] = (formatdate(ts, usegmt=True), _iso(ts))
    return d


def _esc(text: str) -> str:
    return escape(text) if ("&" in text or "<" in text or ">" in text) else text


def _mime(name: str) -> str:
    dot = name.rfind(".")
    ext = name[dot:].lower() if dot > 0 else ""
    m = _MIME_CACHE.get(ext)
    if m is None:
        m = _MIME_CACHE[ext] = mimetypes.guess_type("x" + ext)[0] or "application/octet-stream"
    return m


def _allprop_plain(row: _Row) -> str:
    """allprop for a resource without dead properties or status: one template."""
    e = row.entry
    if e.mtime is not None:
        lm, cd = _dates(int(e.mtime.timestamp()))
        times = (f"<D:creationdate>{cd}</D:creationdate>"
                 f"<D:getlastmodified>{lm}</D:getlastmodified>")
    else:
        times = ""
    if row.is_dir:
        body = (f"{times}<D:displayname>{_esc(row.name)}</D:displayname>"
                "<D:resourcetype><D:collection/></D:resourcetype>")
    else:
        if e.etag:
            tag = _esc(e.etag)
        else:
            us = int(e.mtime.timestamp() * 1e6) if e.mtime else 0
            tag = f"{e.size:x}-{us:x}"
        ctype = e.content_type or _mime(e.name)
        body = (f"{times}<D:displayname>{_esc(row.name)}</D:displayname>"
                f"<D:getcontentlength>{e.size}</D:getcontentlength>"
                f"<D:getcontenttype>{_esc(ctype)}</D:getcontenttype>"
                f'<D:getetag>"{tag}"</D:getetag><D:resourcetype/>')
    return (f"<D:response><D:href>{_esc(row.href)}</D:href><D:propstat><D:prop>{body}"
            f"{SUPPORTED_LOCK}<D:lockdiscovery/></D:prop><D:status>HTTP/1.1 200 OK</D:status>"
            "</D:propstat></D:response>")


def _response(row: _Row, wanted: list[str] | None, dead: dict[str, str]) -> str:
    if wanted is None and not dead and row.status is None:
        return _allprop_plain(row)
    found: list[str] = []
    missing: list[str] = []
    if wanted is None:
        for n in LIVE:
            v = _live(row, n)
            if v is not None:
                found.append(v)
        if row.status is not None:
            found.append(_status_xml(row))
        found.extend(dead.values())
    else:
        for tag in wanted:
            v = None
            if tag.startswith(DAV):
                v = _live(row, tag[len(DAV):])
            elif tag == FEDGATE_NS + "site-status" and row.status is not None:
                v = _status_xml(row)
            if v is None:
                v = dead.get(tag)
            if v is None:
                missing.append(_empty(tag))
            else:
                found.append(v)
    parts = [f"<D:response><D:href>{escape(row.href)}</D:href>"]
    if found or not missing:
        parts.append("<D:propstat><D:prop>" + "".join(found) +
                     "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>")
    if missing:
        parts.append("<D:propstat><D:prop>" + "".join(missing) +
                     "</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>")
    parts.append("</D:response>")
    return "".join(parts)


def _empty(tag: str) -> str:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        if ns == "DAV:":
            return f"<D:{local}/>"
        return f'<X:{local} xmlns:X="{escape(ns)}"/>'
    return f"<{tag}/>"


def _href(path: str, is_dir: bool) -> str:
    h = quote(path, safe="/:@!$&'()*+,;=-._~")
    return h + "/" if is_dir and not h.endswith("/") else h


def handle(provider: FederatedProvider, environ: dict[str, Any], start_response: Any
           ) -> Iterable[bytes] | None:
    """Answer the PROPFIND, or return None to let wsgidav answer it."""
    depth = environ.get("HTTP_DEPTH", "infinity")
    if depth not in ("0", "1") or "HTTP_IF" in environ:
        return None
    length = environ.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > 1 << 20:
        return None
    body = environ["wsgi.input"].read(int(length)) if int(length) else b""
    try:
        wanted = parse_request(body)
    except Unsupported:
        environ["wsgi.input"] = _Replay(body)
        return None
    path = environ["PATH_INFO"]
    res = provider.get_resource_inst(path, environ)
    if res is None or isinstance(res, RootCollection):
        environ["wsgi.input"] = _Replay(body)
        return None
    key = "/" + res.path.strip("/")
    locks = provider.store.locks_at(key, True, True)
    if locks or _ancestor_locked(provider, key):
        environ["wsgi.input"] = _Replay(body)
        return None
    dead = provider.store.props_tree(key, depth=int(depth))
    chunks = ['<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">']
    if isinstance(res, FileResource):
        row = _Row(_href(key, False), key, res.entry, res.get_display_name())
        chunks.append(_response(row, wanted, dead.get(key, {})))
    else:
        assert isinstance(res, SiteCollection)
        status = (res.down or "ok") if res.rel == "/" else None
        row = _Row(_href(key, True), key, res.entry, res.get_display_name(), status)
        chunks.append(_response(row, wanted, dead.get(key, {})))
        if depth == "1":
            # rendered as the listing arrives (adaptors with iter_list fetch
            # their next page meanwhile)
            for e in res._iter_list():
                child = key.rstrip("/") + "/" + e.name
                row = _Row(_href(child, e.is_dir), child, e, e.name)
                chunks.append(_response(row, wanted, dead.get(child, {})))
    chunks.append("</D:multistatus>")
    data = "".join(chunks).encode("utf-8")
    start_response("207 Multi-Status", [("Content-Type", 'application/xml; charset="utf-8"'),
                                        ("Content-Length", str(len(data))),
                                        ("DAV", "1, 2")])
    return [data]


def _ancestor_locked(provider: FederatedProvider, key: str) -> bool:
    parts = key.strip("/").split("/")
    for i in range(1, len(parts)):
        anc = "/" + "/".join(parts[:i])
        if any(lk.get("depth") == "infinity" for lk in provider.store.locks_at(anc, True, False)):
            return True
    return False


class _Replay:
    """wsgi.input stand-in that replays a body already read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = len(self.data) - self.pos
        out = self.data[self.pos:self.pos + size]
        self.pos += len(out)
        return out

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)
