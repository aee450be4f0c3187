"""``s3`` sites: a bucket (and optional key prefix) of an S3-compatible server.

Built on s3fs/aiobotocore.  The adaptor owns one ``S3FileSystem`` per site for
the session and client; every call runs as a coroutine on one dedicated event
loop thread (``fedgate-s3-io``, shared by all S3 sites and separate from
fsspec's own IO thread, so SFTP traffic does not queue behind S3 transfers).
Sync callers (cheroot threads, ``asyncio.to_thread``) block on
``run_coroutine_threadsafe`` futures, which is thread-safe.  s3fs's listings
cache is disabled and never consulted: every ``list()``/``stat()`` asks the
server, so objects written by other clients show up at once.

Layout
    A site path ``/a/b`` is the key ``{prefix}a/b``.  Directories are key
    prefixes; ``mkdir`` writes a zero-byte marker ``{prefix}a/`` so that empty
    collections persist.  A directory exists when its marker or any key under
    it exists; the site root exists whenever the bucket does.  Removing or
    moving a tree also deletes its directory keys deepest first: S3 ignores
    them, but servers on a hierarchical store (SeaweedFS) otherwise keep
    listing the emptied directories.  Removing the last entry of a directory
    that had no marker writes one, so the directory stays (as on a disk).

Writes (memory bound)
    A writer buffers up to ``part_size`` bytes.  Small files (< ``part_size``)
    are sent with one ``PutObject`` at ``commit()``; larger ones stream as a
    multipart upload with at most ``upload_concurrency`` parts in flight, so a
    writer holds at most about ``(upload_concurrency + 1) * part_size`` bytes
    (defaults: ``part_size`` = 8 MiB, ``upload_concurrency`` = 4, i.e. about
    40 MiB per concurrent upload, whatever the file size).  Part buffers are
    handed to the upload without copying and sent in 1 MiB slices, so the
    socket layer adds no second copy of a part.  The object appears
    only at ``CompleteMultipartUpload`` in ``commit()``; ``abort()``, a failed
    part, a failed commit or garbage collection of an uncommitted writer abort
    the multipart upload (no partial object, no pending upload left).  When
    more than 2,000 parts are needed (no ``size_hint``), the part size doubles
    every 2,000 parts to stay within S3's 10,000-part limit.

Reads
    ``open_read`` sends one (ranged) GET for a presigned URL on a pooled
    ``http.client`` connection and reads the body with blocking calls in the
    caller's thread (``adaptors.s3_direct``: about 0.14 CPU-s per GiB instead
    of 0.35 through aiohttp).  Any answer but 200/206, a proxy in the way, or
    ``FEDGATE_S3_DIRECT_GET=0`` use aiobotocore's ``GetObject`` instead, whose
    body is read at least 256 KiB per hop to the IO loop.  ETags come
    unquoted and times as aware UTC.

Listings
    ListObjectsV2 pages (``list_page_keys`` keys asked for, 5,000 by
    default; AWS sends at most 1,000) are signed, sent and retried by
    botocore, but their bodies skip botocore's generic XML parse and its
    second parse looking for an error document (together ~80% of a big
    listing's time, and most of its garbage-collection churn): the response
    parser hands the raw page to :func:`parse_listing` (regular expressions
    for the usual shape, the C XML parser for anything else; both tested
    against botocore's result).  The next page is requested as soon as its
    token is seen in the raw body, so the server works on it while this one
    is parsed and turned into entries.  Nothing is cached.

Copies
    ``copy``/``rename`` use server-side ``CopyObject`` (``UploadPartCopy`` in
    ``copy_part_size`` pieces above 5 GiB) and never move object data through
    the gateway.  ``copy_from`` does the same across buckets when the source is
    an S3 site on the same endpoint with the same credentials (otherwise it
    raises :class:`errors.Unsupported` and callers stream).

Errors and retries
    botocore's ``standard`` retry mode retries SlowDown/throttling, 5xx and
    connection faults with exponential backoff (``max_attempts``, default 3;
    ``connect_timeout`` 5 s, ``read_timeout`` 60 s).  A GET whose connection
    breaks mid-body resumes from where it stopped.  All back-end exceptions
    are translated in :func:`translate_error`; a missing bucket, refused
    credentials, a refused connection or a bad option give
    :class:`errors.Unavailable` with a reason (never a secret).

Connections
    Up to ``4 * max_connections`` pooled HTTP connections per site (at least
    ``2 * upload_concurrency + 4``).  An open reader holds one.

Processes
    A process forked after a site was used gets its own IO loop and client on
    first use and never touches the parent's connections.

Payload signing
    Request bodies are sent with ``UNSIGNED-PAYLOAD`` unless ``sign_payload``
    is true (botocore's behaviour over https; it spares hashing every byte on
    the IO thread).  Set ``sign_payload: true`` to sign bodies on plain-http
    endpoints.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import logging
import math
import mimetypes
import os
import re
import threading
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Container, Coroutine, Iterator
from contextlib import aclosing
from contextvars import ContextVar
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache
from html import unescape
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote_plus, urlsplit
from xml.etree.ElementTree import fromstring as xml_fromstring

from adaptors import errors
from adaptors.base import (
    Adaptor,
    AdaptorContext,
    Capability,
    Entry,
    OptionSpec,
    Reader,
    Writer,
    base_name,
    parent_of,
)
from adaptors.s3_direct import DirectBody, DirectGets, enabled_for

T = TypeVar("T")
log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB

#: defaults of the multipart options (quoted by the README)
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_UPLOAD_CONCURRENCY = 4
#: S3 limits
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
#: CopyObject handles objects up to this size; bigger ones use UploadPartCopy
MAX_SINGLE_COPY = 5 * GiB
DEFAULT_COPY_PART_SIZE = 512 * MiB
#: parallel server-side copies/deletes inside one rename/remove of a tree
TREE_CONCURRENCY = 16
#: DeleteObjects takes at most this many keys
DELETE_BATCH = 1000
#: name of the probe object written (and removed) by probe(); hidden from listings
PROBE_PREFIX = ".fedgate-probe-"
#: least bytes fetched from a response body per hop to the IO loop (small reads
#: are served from this buffer; it also bounds the over-read of a short Range)
READ_CHUNK = 256 * 1024
#: keys asked for per ListObjectsV2 page.  AWS answers at most 1,000 whatever
#: is asked (and says IsTruncated); servers that honour more (SeaweedFS, Ceph
#: RGW up to its limit) list a large folder in fewer round trips.  A server
#: that refuses the value (InvalidArgument) is asked for 1,000 from then on.
#: 5,000 rather than more: SeaweedFS answered one 10,000-key page in ~100 ms
#: or, as often, ~180 ms; two pages of 5,000 (the second fetched while the
#: first is parsed) came in at 98 ms median and fewer slow ones.
LIST_PAGE_KEYS = 5000
S3_STANDARD_PAGE = 1000

_UNAVAILABLE_CODES = frozenset({
    "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName",
    "AuthorizationHeaderMalformed", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "InvalidClientTokenId", "AccountProblem", "PermanentRedirect", "MissingSecurityHeader",
})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "OperationAborted",
    "RequestTimeTooSkewed", "500", "502", "503", "504",
})
_SPACE_CODES = frozenset({"QuotaExceeded", "InsufficientStorage", "EntityTooLarge"})


def translate_error(exc: BaseException, path: str = "", bucket: str = "",
                    endpoint: str = "") -> errors.AdaptorError:
    """THE one mapping of back-end exceptions (botocore, aiohttp, asyncio) into
    the adaptor error tree.  Messages carry codes and server messages, never
    credentials or signed URLs."""
    if isinstance(exc, errors.AdaptorError):
        return exc
    # botocore imports are local so that importing this module stays cheap
    from botocore import exceptions as bx

    where = f" ({path})" if path else ""
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = str(err.get("Message") or "").strip()
        op = getattr(exc, "operation_name", "") or "request"
        msg = f"{op}: {code or status}{': ' + text if text else ''}{where}"
        if code == "NoSuchBucket":
            return errors.Unavailable(f"bucket {bucket!r} does not exist", path)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                    "ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
            return errors.Unavailable(f"authentication failed ({code})", path)
        if code in _UNAVAILABLE_CODES:
            return errors.Unavailable(msg, path)
        if code in _NOT_FOUND_CODES:
            return errors.NotFound(f"not found{where}", path)
        if code in _DENIED_CODES:
            return errors.PermissionDenied(f"access denied{where}", path)
        if code in _SPACE_CODES or status == 507:
            return errors.InsufficientStorage(msg, path)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return errors.Transient(msg, path)
        if status == 404:
            return errors.NotFound(f"not found{where}", path)
        if status == 403:
            return errors.PermissionDenied(f"access denied{where}", path)
        return errors.AdaptorError(msg, path)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return errors.Unavailable("no usable S3 credentials configured", path)
    if isinstance(exc, bx.SSLError):
        return errors.Unavailable(f"TLS error talking to {endpoint}", path)
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        # connection refused, unknown host, connect timeout: the site is down
        return errors.Unavailable(f"cannot connect to {endpoint}", path)
    if isinstance(exc, bx.ReadTimeoutError | bx.ConnectionClosedError
                  | bx.ResponseStreamingError | bx.IncompleteReadError
                  | asyncio.TimeoutError | TimeoutError):
        return errors.Transient(f"connection to {endpoint} failed: "
                                f"{exc.__class__.__name__}{where}", path)
    if isinstance(exc, bx.ParamValidationError):
        return errors.AdaptorError(f"invalid request{where}", path)
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency of aiobotocore
        aiohttp = None  # type: ignore[assignment]
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        return errors.Transient(f"connection to {endpoint} failed: "
                                f"{exc.__class__.__name__}{where}", path)
    if isinstance(exc, ConnectionError | http.client.HTTPException):
        return errors.Transient(f"connection to {endpoint} failed{where}", path)
    if isinstance(exc, OSError):
        # e.g. an unreadable CA bundle while setting up the client
        return errors.Unavailable(f"cannot set up the S3 client for {endpoint}: "
                                  f"{exc.__class__.__name__}", path)
    if isinstance(exc, ValueError) and "endpoint" in str(exc).lower():
        return errors.Unavailable(f"invalid endpoint_url {endpoint!r}", path)
    return errors.AdaptorError(f"S3 error: {exc.__class__.__name__}{where}", path)


# -- the IO loop ---------------------------------------------------------------
_LOOP_LOCK = threading.Lock()
_LOOP: asyncio.AbstractEventLoop | None = None


#: clients inherited from a parent process, kept alive so that garbage
#: collection never closes connections the parent still uses
_FORK_LEFTOVERS: list[Any] = []


def _reset_after_fork() -> None:
    """In a forked child the parent's IO thread does not exist: start afresh."""
    global _LOOP, _LOOP_LOCK
    _LOOP = None
    _LOOP_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def io_loop() -> asyncio.AbstractEventLoop:
    """The event loop (on its own daemon thread) every S3 coroutine runs on."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="fedgate-s3-io",
                             daemon=True).start()
            _LOOP = loop
        return _LOOP


def _on_io_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_timestamp(value: Any) -> datetime:
    """Fast timestamp parser for botocore responses: ISO 8601 (listings) and
    RFC 1123 (headers) in aware UTC, botocore's own parser for anything else."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:
                parsed = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

    result: datetime = DEFAULT_TIMESTAMP_PARSER(value)
    return result


def _unquote(etag: Any) -> str | None:
    if not etag:
        return None
    text = str(etag).strip()
    if text.startswith("W/"):
        text = text[2:]
    return text.strip('"') or None


_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


# -- listings ------------------------------------------------------------------------
#: True while ``_list_keys`` awaits a ListObjectsV2 page (a ContextVar, so per
#: task).  This adaptor's response parser then skips botocore's generic XML
#: parse (about 80% of a big listing's time) and hands over the raw body under
#: ``RAW_BODY``; ``_list_keys`` reads it with :func:`parse_listing` while the
#: next page is already being fetched.  Errors, retries and signing stay
#: botocore's; other requests are parsed as usual.
_RAW_LISTING: ContextVar[bool] = ContextVar("fedgate_s3_raw_listing", default=False)
RAW_BODY = "FedgateRawBody"
_LISTING_END = b"</ListBucketResult>"
_NEXT_TOKEN_RE = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_TRUNCATED_RE = re.compile(rb"<IsTruncated>\s*true\s*</IsTruncated>")

#: one page of a listing: objects (dicts with Key, Size, LastModified, ETag,
#: StorageClass as botocore names them), common prefixes, IsTruncated and
#: NextContinuationToken
Listing = tuple[list[dict[str, Any]], list[str], bool, str | None]


def parse_listing(body: bytes) -> Listing:
    """Read a ListObjectsV2 response body (``ListBucketResult``), keys and
    prefixes URL-decoded when the server says ``EncodingType`` url.

    A page in the usual shape (every ``Contents`` with the same children in the
    same order, no attributes, CDATA or comments) is read by regular
    expressions (:func:`_scan_listing`); anything else by the XML parser
    (:func:`_tree_listing`).  Both give the same result; the scan is about ten
    times faster and creates no element tree, which in a big process costs as
    much again in garbage collection.  A document type declaration (entities)
    is refused."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ValueError("listing with a document type declaration")
    listing = None
    if b"<![CDATA[" not in body and b"<!--" not in body:
        listing = _scan_listing(body.decode("utf-8"))
    return listing if listing is not None else _tree_listing(body)


#: the children of a listed object read by the scan, and how
_SCAN_FIELDS = frozenset({"Key", "Size", "LastModified", "ETag", "StorageClass",
                          "ChecksumAlgorithm", "ChecksumType"})
_FIRST_CONTENTS_RE = re.compile(r"<Contents>(.*?)</Contents>", re.S)
_SIMPLE_FIELD_RE = re.compile(r"\s*<([A-Za-z]+)>[^<]*</\1>")
_PREFIX_RE = re.compile(r"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>")
_TOP_RE = {name: re.compile(rf"<{name}>([^<]*)</{name}>")
           for name in ("IsTruncated", "NextContinuationToken", "EncodingType")}


@cache
def _contents_pattern(order: tuple[str, ...]) -> re.Pattern[str]:
    """One ``Contents`` element whose children come in ``order``."""
    fields = "".join(rf"\s*<{t}>([^<]*)</{t}>" for t in order)
    return re.compile(rf"<Contents>{fields}\s*</Contents>")


def _text(value: str) -> str:
    """XML character data with its references resolved (``&#34;`` is how some
    servers send the quotes of every ETag)."""
    if "&" not in value:
        return value
    value = value.replace("&#34;", '"').replace("&quot;", '"')
    return unescape(value) if "&" in value else value


def _scan_listing(text: str) -> Listing | None:
    """The fast reading of :func:`parse_listing`, or None when the page is not in
    the shape it reads (the caller then parses it as XML)."""
    if "<ListBucketResult" not in text:
        return None
    contents: list[dict[str, Any]] = []
    first = _FIRST_CONTENTS_RE.search(text)
    if first is not None:
        inner = first.group(1)
        order = tuple(m.group(1) for m in _SIMPLE_FIELD_RE.finditer(inner))
        if (not order or "Key" not in order or len(set(order)) != len(order)
                or not set(order) <= _SCAN_FIELDS
                or "".join(m.group(0) for m in _SIMPLE_FIELD_RE.finditer(inner)).strip()
                != inner.strip()):
            return None
        rows = _contents_pattern(order).findall(text)
        if len(order) == 1:
            rows = [(r,) for r in rows]
        # convert column by column (C-level loops), then one dict per object
        columns: list[Any] = [list(col) for col in zip(*rows, strict=True)] or [
            [] for _ in order]
        for i, name in enumerate(order):
            col = columns[i]
            if name == "Size":
                columns[i] = [int(v) if v else 0 for v in col]
            elif name == "LastModified":
                times: dict[str, datetime] = {}
                for stamp in set(col):
                    times[stamp] = parse_timestamp(stamp.strip())
                columns[i] = [times[v] for v in col]
            elif name == "ChecksumAlgorithm":
                columns[i] = [[_text(v)] for v in col]
            else:
                columns[i] = [_text(v) if "&" in v else v for v in col]
        contents = [dict(zip(order, values, strict=True))
                    for values in zip(*columns, strict=True)]
    # every Contents element (opening and closing tag, any namespace prefix)
    # must have been read
    if text.count("Contents>") != 2 * len(contents):
        return None
    prefixes = [_text(p) for p in _PREFIX_RE.findall(text)]
    if text.count("CommonPrefixes>") != 2 * len(prefixes):
        return None
    top: dict[str, str] = {}
    for name, rx in _TOP_RE.items():
        found = rx.findall(text)
        if len(found) > 1 or text.count(f"{name}>") != 2 * len(found):
            return None
        if found:
            top[name] = _text(found[0])
    truncated = top.get("IsTruncated", "").strip().lower() == "true"
    token = top.get("NextContinuationToken") or None
    if top.get("EncodingType", "").strip().lower() == "url":
        _url_decode(contents, prefixes)
    return contents, prefixes, truncated, token


def _url_decode(contents: list[dict[str, Any]], prefixes: list[str]) -> None:
    for obj in contents:
        k = obj["Key"]
        if "%" in k or "+" in k:
            obj["Key"] = unquote_plus(k)
    prefixes[:] = [unquote_plus(p) if "%" in p or "+" in p else p for p in prefixes]


def _tree_listing(body: bytes) -> Listing:
    """:func:`parse_listing` by the XML parser (the C one, as botocore's)."""
    root = xml_fromstring(body)  # noqa: S314 (no DTD: no entities; botocore does the same)
    tag = root.tag
    ns = tag[:tag.index("}") + 1] if tag.startswith("{") else ""
    if tag[len(ns):] != "ListBucketResult":
        raise ValueError(f"unexpected listing document <{tag[len(ns):]}>")
    t_contents, t_prefixes = ns + "Contents", ns + "CommonPrefixes"
    t_key, t_size, t_mtime, t_etag, t_class, t_prefix = (
        ns + "Key", ns + "Size", ns + "LastModified", ns + "ETag", ns + "StorageClass",
        ns + "Prefix")
    t_truncated, t_token, t_encoding = (ns + "IsTruncated", ns + "NextContinuationToken",
                                        ns + "EncodingType")
    t_algo, t_ctype = ns + "ChecksumAlgorithm", ns + "ChecksumType"
    contents: list[dict[str, Any]] = []
    prefixes: list[str] = []
    truncated = False
    token: str | None = None
    url = False
    times: dict[str, datetime] = {}
    for el in root:
        t = el.tag
        if t == t_contents:
            obj: dict[str, Any] = {}
            for c in el:
                ct = c.tag
                if ct == t_key:
                    obj["Key"] = c.text or ""
                elif ct == t_size:
                    obj["Size"] = int(c.text or 0)
                elif ct == t_mtime:
                    text = (c.text or "").strip()
                    when = times.get(text)
                    if when is None:
                        when = times[text] = parse_timestamp(text)
                    obj["LastModified"] = when
                elif ct == t_etag:
                    obj["ETag"] = c.text or ""
                elif ct == t_class:
                    obj["StorageClass"] = c.text or ""
                elif ct == t_algo:
                    obj.setdefault("ChecksumAlgorithm", []).append(c.text or "")
                elif ct == t_ctype:
                    obj["ChecksumType"] = c.text or ""
            if "Key" not in obj:
                raise ValueError("listing entry without a Key")
            contents.append(obj)
        elif t == t_prefixes:
            prefixes.extend(c.text or "" for c in el if c.tag == t_prefix)
        elif t == t_truncated:
            truncated = (el.text or "").strip().lower() == "true"
        elif t == t_token:
            token = el.text or None
        elif t == t_encoding:
            url = (el.text or "").strip().lower() == "url"
    if url:
        _url_decode(contents, prefixes)
    return contents, prefixes, truncated, token


def peek_next_token(body: bytes) -> str | None:
    """The continuation token of a listing page found by a scan of the raw body
    (no parse), or None when the page is the last one or the body holds XML a
    scan cannot read safely (CDATA, comments).  Only a hint for fetching the next
    page early: :func:`parse_listing` has the last word."""
    if b"<![CDATA[" in body or b"<!--" in body or not _TRUNCATED_RE.search(body):
        return None
    m = _NEXT_TOKEN_RE.search(body)
    if m is None or not m.group(1):
        return None
    return unescape(m.group(1).decode("utf-8"))


def _drop(fut: asyncio.Future[Any]) -> None:
    """Cancel a task nobody will await (its error, if it already failed, is
    read so that asyncio does not log it as never retrieved)."""
    if fut.done():
        if not fut.cancelled():
            fut.exception()
    else:
        fut.cancel()


def _complete_listing(body: Any) -> bool:
    return isinstance(body, bytes) and body.rstrip().endswith(_LISTING_END)


@cache
def _listing_parser_factory_class() -> type:
    """aiobotocore's parser factory, with a rest-xml parser that leaves the body
    of ListObjectsV2 pages to ``_list_keys`` (see ``_RAW_LISTING``)."""
    from aiobotocore.parsers import PROTOCOL_PARSERS, AioResponseParserFactory

    base: type = PROTOCOL_PARSERS["rest-xml"]

    class ListingParser(base):
        def _parse_payload(self, response: dict[str, Any], shape: Any,
                           member_shapes: Any, final_parsed: dict[str, Any]) -> None:
            if (_RAW_LISTING.get() and shape is not None
                    and shape.name == "ListObjectsV2Output"
                    and response.get("status_code") == 200
                    and isinstance(response.get("body"), bytes)):
                final_parsed[RAW_BODY] = response["body"]
                return
            super()._parse_payload(response, shape, member_shapes, final_parsed)

    class ListingParserFactory(AioResponseParserFactory):
        def create_parser(self, protocol_name: str) -> Any:
            if protocol_name == "rest-xml":
                return ListingParser(**self._defaults)
            return super().create_parser(protocol_name)

    return ListingParserFactory


def install_fast_listings(session: Any) -> None:
    """Set up an aiobotocore session for raw listing pages: the parser factory
    above (with :func:`parse_timestamp`: dateutil costs more than the request
    on big listings) and botocore's check for errors inside 200 responses made
    cheap for complete listing pages (it builds a whole element tree of every
    S3 response otherwise).  Anything else still gets botocore's full check."""
    factory = _listing_parser_factory_class()()
    factory.set_parser_defaults(timestamp_parser=parse_timestamp)
    session.register_component("response_parser_factory", factory)
    try:
        from botocore.handlers import _handle_200_error
    except ImportError:  # pragma: no cover - a botocore without the check
        return

    def check_200_error(operation_model: Any, response_dict: Any, **kwargs: Any) -> None:
        if (_RAW_LISTING.get() and getattr(operation_model, "name", "") == "ListObjectsV2"
                and response_dict and response_dict.get("status_code") == 200
                and _complete_listing(response_dict.get("body"))):
            return  # a whole ListBucketResult: no error document, not cut short
        _handle_200_error(operation_model=operation_model, response_dict=response_dict,
                          **kwargs)

    events = session.get_component("event_emitter")
    events.unregister("before-parse.s3.*", _handle_200_error)
    events.register_first("before-parse.s3.*", check_200_error)


# -- readers and writers ---------------------------------------------------------
class _S3Reader:
    """Streams the body of one GET.  Usually the body is a :class:`DirectBody`
    read with blocking calls in the caller's thread (``adaptors.s3_direct``);
    otherwise it is aiobotocore's, with one IO-loop hop per ``read`` of at
    least ``READ_CHUNK`` bytes (smaller reads are served from a buffer of at
    most that size).  When the connection breaks mid-body, the rest is asked
    for again (Range from the current position, If-Match the ETag; directly
    if the server answers so, else through botocore) up to ``RESUMES`` times,
    so a long download survives a transient fault."""

    RESUMES = 3

    def __init__(self, adaptor: S3Adaptor, path: str, key: str, resp: dict[str, Any] | None,
                 position: int, end: int | None, direct: DirectBody | None = None) -> None:
        self._adaptor = adaptor
        self._path = path
        self._key = key
        self._body: Any = resp["Body"] if resp else None
        self._direct = direct
        self._etag: str | None = resp.get("ETag") if resp else None
        self._pos = position
        self._end = end  # exclusive end, None = to EOF
        if direct is not None:
            self._etag, self._end = direct.etag, direct.end
        self._buf = b""  # fetched but not yet returned: self._buf[self._off:]
        self._off = 0
        self._resumes = 0
        self._pid = os.getpid()
        self._closed = self._body is None and direct is None

    async def _fill(self, size: int) -> bytes:
        parts: list[bytes] = []
        want = size
        while want > 0:
            try:
                chunk = await self._body.read(want if want < (1 << 62) else -1)
            except Exception as exc:
                if self._resumes >= self.RESUMES or not isinstance(
                        self._adaptor._translate(exc, self._path), errors.Transient):
                    raise
                self._resumes += 1
                await self._reopen()
                continue
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
            self._pos += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _reopen(self) -> None:
        old, self._body = self._body, None
        try:
            if old is not None:
                old.close()
        except Exception as exc:
            log.debug("closing a broken response failed: %s", exc.__class__.__name__)
        s3 = await self._adaptor._client()
        rng = f"bytes={self._pos}-" + ("" if self._end is None else str(self._end - 1))
        kwargs: dict[str, Any] = {"Bucket": self._adaptor.bucket, "Key": self._key,
                                  "Range": rng}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        resp = await s3.get_object(**kwargs)
        self._body = resp["Body"]

    def _read_direct(self, body: DirectBody, size: int) -> bytes:
        while True:
            try:
                data = body.read(size)
            except (OSError, http.client.HTTPException) as exc:
                body.close()
                self._direct = None
                if self._resumes >= self.RESUMES:
                    raise self._adaptor._translate(exc, self._path) from exc
                self._resumes += 1
                resumed = self._adaptor._direct_get(self._path, self._key, self._pos,
                                                    self._end, self._etag)
                if resumed is None:  # the server would not: ask through botocore
                    self._adaptor._run(self._reopen(), self._path)
                    return self.read(size)
                body = self._direct = resumed
                continue
            self._pos += len(data)
            return data

    def read(self, size: int = -1) -> bytes:
        if self._closed:
            return b""
        if size == 0:
            return b""
        if self._direct is not None:
            return self._read_direct(self._direct, size)
        buffered = len(self._buf) - self._off
        if size < 0:
            data = self._buf[self._off:] + self._adaptor._run(self._fill(1 << 62), self._path)
            self._buf, self._off = b"", 0
            return data
        if buffered >= size:
            data = self._buf[self._off:self._off + size]
            self._off += size
            return data
        fetched = self._adaptor._run(self._fill(max(size - buffered, READ_CHUNK)), self._path)
        if buffered:
            fetched = self._buf[self._off:] + fetched
        data = fetched[:size]
        self._buf, self._off = (fetched, size) if len(fetched) > size else (b"", 0)
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buf = b""
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()
        body, self._body = self._body, None
        if body is None or self._pid != os.getpid():  # inherited over fork: the parent's
            return
        loop = self._adaptor._loop
        try:
            if _on_io_thread(loop):
                body.close()
            else:
                loop.call_soon_threadsafe(body.close)
        except RuntimeError:  # loop already closed at interpreter exit
            pass

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


class _PartBody:
    """The body of one uploaded part.  botocore sees a seekable file (length,
    rewind on retry, hashing when ``sign_payload``); aiohttp sees an async
    iterable and sends it in 1 MiB slices, awaiting the socket between slices,
    so no second copy of the part piles up in the transport's buffer."""

    SLICE = 1 * MiB

    def __init__(self, data: bytearray) -> None:
        self._data = data
        self._pos = 0

    def __len__(self) -> int:
        return len(self._data)

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos:end])
        self._pos += len(chunk)
        return chunk

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._data)}[whence]
        self._pos = max(0, min(len(self._data), base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._slices()

    async def _slices(self) -> AsyncIterator[memoryview]:
        view = memoryview(self._data)
        for i in range(0, len(view), self.SLICE):
            yield view[i:i + self.SLICE]


class _PartState:
    """Whether one part upload's coroutine started and whether it finished."""

    __slots__ = ("finished", "started")

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()


class _S3Writer(Writer):
    """A staged upload: one PutObject for small files, otherwise a multipart
    upload with a bounded number of parts in flight (see module docstring)."""

    def __init__(self, adaptor: S3Adaptor, path: str, key: str, size_hint: int | None) -> None:
        self._a = adaptor
        self._path = path
        self._key = key
        self._concurrency = adaptor.upload_concurrency
        base = adaptor.part_size
        if size_hint and size_hint > base * MAX_PARTS:
            base = min(MAX_PART_SIZE, max(base, math.ceil(size_hint / (MAX_PARTS - 1))))
        self._base_part_size = base
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._next_part = 1
        self._parts: dict[int, str] = {}
        self._inflight: list[tuple[int, concurrent.futures.Future[str], _PartState]] = []
        self._done = False
        self.bytes_written = 0
        self._content_type = adaptor.guess_type(path)
        self._pid = os.getpid()

    def _part_size(self) -> int:
        # grows past 2,000 parts so unknown-size uploads fit in 10,000 parts
        return min(MAX_PART_SIZE, self._base_part_size << ((self._next_part - 1) // 2000))

    def write(self, data: bytes) -> int:
        if self._done:
            raise ValueError("write after commit/abort")
        n = len(data)
        if not n:
            return 0
        self._buf += data
        self.bytes_written += n
        try:
            while len(self._buf) >= self._part_size():
                self._wait_slots(self._concurrency - 1)
                # hand the buffer itself over (no copy of the part); only the
                # overshoot past the part size is copied into the next buffer
                size = self._part_size()
                part = self._buf
                self._buf = bytearray(memoryview(part)[size:])
                del part[size:]
                self._submit(part)
        except BaseException:
            self._fail()
            raise
        return n

    def _submit(self, part: bytearray) -> None:
        if self._upload_id is None:
            self._upload_id = self._a._run(
                self._a._create_multipart(self._key, self._content_type), self._path)
        number = self._next_part
        self._next_part += 1
        state = _PartState()
        fut = asyncio.run_coroutine_threadsafe(
            self._a._upload_part(self._key, self._upload_id, number, part, state),
            self._a._loop)
        self._inflight.append((number, fut, state))

    def _wait_slots(self, keep: int) -> None:
        """Wait until at most ``keep`` parts are in flight; raise on a failed part."""
        while len(self._inflight) > keep:
            futs = [f for _, f, _ in self._inflight]
            concurrent.futures.wait(futs, return_when=concurrent.futures.FIRST_COMPLETED)
            still: list[tuple[int, concurrent.futures.Future[str], _PartState]] = []
            for number, fut, ev in self._inflight:
                if fut.done():
                    try:
                        self._parts[number] = fut.result()
                    except BaseException as exc:
                        raise self._a._translate(exc, self._path) from exc
                else:
                    still.append((number, fut, ev))
            self._inflight = still

    def commit(self) -> None:
        if self._done:
            return
        try:
            if self._upload_id is None:
                data = bytes(self._buf)
                self._buf = bytearray()
                self._a._run(self._a._put_object(self._key, data, self._content_type),
                             self._path)
            else:
                if self._buf:
                    part, self._buf = self._buf, bytearray()
                    self._wait_slots(self._concurrency - 1)
                    self._submit(part)
                self._wait_slots(0)
                parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
                self._a._run(self._a._complete_multipart(self._key, self._upload_id, parts),
                             self._path)
                self._upload_id = None
        except BaseException:
            self._fail()
            raise
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._fail()

    def _fail(self) -> None:
        """Drop everything: cancel parts in flight, abort the multipart upload."""
        self._done = True
        self._buf = bytearray()
        inflight, self._inflight = self._inflight, []
        for _, fut, _ in inflight:
            fut.cancel()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        loop = self._a._loop
        if _on_io_thread(loop):  # garbage-collected on the IO thread: cannot block
            loop.create_task(self._a._abort_multipart(self._key, upload_id))
            return
        if not loop.is_running():  # interpreter shutting down
            return
        # wait until cancelled parts really stopped so none lands after the abort:
        # after a barrier on the loop every part either ran its first step
        # (``started``; it will set ``finished``) or was cancelled before it
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(60)
        except Exception as exc:
            log.debug("IO loop barrier failed: %s", exc.__class__.__name__)
        for _, _, state in inflight:
            if state.started.is_set():
                state.finished.wait(60)
        try:
            self._a._run(self._a._abort_multipart(self._key, upload_id), self._path, 120)
        except errors.AdaptorError:
            pass  # best effort; S3 lifecycle rules reap what is left

    def __del__(self) -> None:
        if not getattr(self, "_done", True) and getattr(self, "_pid", 0) == os.getpid():
            try:
                self._fail()
            except Exception as exc:
                log.debug("abort of an unreferenced upload failed: %s", exc.__class__.__name__)


def _close_client(creator: Any, loop: asyncio.AbstractEventLoop, pid: int) -> None:
    """Close one aiobotocore client (its HTTP connections), from any thread but
    only in the process that opened it."""
    if creator is None or pid != os.getpid() or loop.is_closed() or not loop.is_running():
        return
    if _on_io_thread(loop):
        loop.create_task(creator.__aexit__(None, None, None))
        return
    try:
        asyncio.run_coroutine_threadsafe(creator.__aexit__(None, None, None), loop).result(10)
    except Exception as exc:
        log.debug("closing the S3 client failed: %s", exc.__class__.__name__)


# -- the adaptor -------------------------------------------------------------------
class S3Adaptor(Adaptor):
    """A bucket (plus optional prefix) of an S3-compatible object store."""

    type_name = "s3"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "endpoint_url": OptionSpec(str, help="S3 endpoint, e.g. https://s3.example.org "
                                   "(default: AWS for the region)"),
        "bucket": OptionSpec(str, required=True, help="bucket served as the site root"),
        "prefix": OptionSpec(str, default="", help="key prefix inside the bucket"),
        "access_key_id": OptionSpec(str, secret=True, help="access key id"),
        "secret_access_key": OptionSpec(str, secret=True, help="secret access key"),
        "session_token": OptionSpec(str, secret=True, help="optional session token"),
        "anonymous": OptionSpec(bool, default=False,
                                help="unsigned requests (public buckets); without keys "
                                "and not anonymous, botocore's credential chain is used"),
        "region": OptionSpec(str, default="us-east-1"),
        "addressing_style": OptionSpec(str, default="auto", help="path | virtual | auto"),
        "part_size": OptionSpec(int, default=DEFAULT_PART_SIZE,
                                help="multipart part size in bytes (>= 5 MiB)"),
        "upload_concurrency": OptionSpec(int, default=DEFAULT_UPLOAD_CONCURRENCY,
                                         help="parts of one upload in flight at once"),
        "copy_part_size": OptionSpec(int, default=DEFAULT_COPY_PART_SIZE,
                                     help="UploadPartCopy piece size for copies > 5 GiB"),
        "max_attempts": OptionSpec(int, default=3,
                                   help="attempts per request (botocore standard retries)"),
        "connect_timeout": OptionSpec((int, float), default=5),
        "read_timeout": OptionSpec((int, float), default=60),
        "verify_tls": OptionSpec(bool, default=True),
        "ca_bundle": OptionSpec(str, help="CA bundle for https endpoints"),
        "sign_payload": OptionSpec(bool, default=False,
                                   help="SHA-256-sign request bodies (also over http)"),
        "list_page_keys": OptionSpec(int, default=LIST_PAGE_KEYS,
                                     help="MaxKeys per listing page (AWS caps it at 1000)"),
    }
    capabilities = Capability.SERVER_COPY | Capability.THIRD_PARTY_COPY

    #: copies of objects bigger than this use UploadPartCopy (tests lower it)
    max_single_copy: int = MAX_SINGLE_COPY

    def __init__(self, name: str, options: Any, context: AdaptorContext) -> None:
        super().__init__(name, options, context)
        opt = self.options
        self.endpoint_url: str | None = opt.get("endpoint_url") or None
        self.bucket = str(opt.get("bucket") or "")
        prefix = str(opt.get("prefix") or "").strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.region = str(opt.get("region") or "us-east-1")
        self.addressing_style = str(opt.get("addressing_style") or "auto")
        self.part_size = int(opt.get("part_size") or DEFAULT_PART_SIZE)
        self.upload_concurrency = int(opt.get("upload_concurrency")
                                      or DEFAULT_UPLOAD_CONCURRENCY)
        self.copy_part_size = int(opt.get("copy_part_size") or DEFAULT_COPY_PART_SIZE)
        self.list_page_keys = max(1, int(opt.get("list_page_keys") or LIST_PAGE_KEYS))
        self._access_key: str | None = opt.get("access_key_id") or None
        self._secret_key: str | None = opt.get("secret_access_key") or None
        self._token: str | None = opt.get("session_token") or None
        self._anonymous = bool(opt.get("anonymous", False))
        self._config_error = self._validate()
        self._pid = os.getpid()
        self._fs_lock = threading.Lock()
        self._fs: Any = None
        self._client_obj: Any = None
        self._finalizer: weakref.finalize | None = None
        max_conn = int(opt.get("max_connections") or 8)
        self._pool_size = max(4 * max_conn, 2 * self.upload_concurrency + 4)
        self.connect_timeout = float(opt.get("connect_timeout") or 5)
        self.read_timeout = float(opt.get("read_timeout") or 60)
        self._direct_gets = DirectGets(self.connect_timeout, self.read_timeout,
                                       verify_tls=bool(opt.get("verify_tls", True)),
                                       ca_bundle=opt.get("ca_bundle") or None)
        self._direct_ok: bool | None = None  # proxies checked at the first GET

    def _validate(self) -> str | None:
        if not self.bucket:
            return "bucket is not set"
        if self.addressing_style not in ("path", "virtual", "auto"):
            return "addressing_style must be path, virtual or auto"
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            return "part_size must be between 5 MiB and 5 GiB"
        if not MIN_PART_SIZE <= self.copy_part_size <= MAX_PART_SIZE:
            return "copy_part_size must be between 5 MiB and 5 GiB"
        if self.upload_concurrency < 1:
            return "upload_concurrency must be at least 1"
        if bool(self._access_key) != bool(self._secret_key):
            return "access_key_id and secret_access_key must be given together"
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return "endpoint_url must be an http(s) URL"
        return None

    # -- description --------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        host: str | None = None
        port: int | None = None
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            host = parts.hostname
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                port = None
        else:
            host = f"s3.{self.region}.amazonaws.com"
            port = 443
        return {"host": host, "port": port, "type": self.type_name,
                "mount": f"{self.bucket}/{self.prefix}"}

    @property
    def _endpoint_display(self) -> str:
        if self.endpoint_url:
            p = urlsplit(self.endpoint_url)
            return f"{p.scheme}://{p.hostname}{':' + str(p.port) if p.port else ''}"
        return f"AWS S3 ({self.region})"

    def same_endpoint(self, other: Adaptor) -> bool:
        """True when ``other`` is an S3 site this one can copy from server-side."""
        return (isinstance(other, S3Adaptor)
                and (other.endpoint_url or "").rstrip("/") == (self.endpoint_url or "").rstrip("/")
                and other.region == self.region
                and other._access_key == self._access_key
                and other._secret_key == self._secret_key
                and other._anonymous == self._anonymous)

    @staticmethod
    def guess_type(path: str) -> str:
        return mimetypes.guess_type(base_name(path))[0] or "application/octet-stream"

    # -- plumbing -------------------------------------------------------------------
    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        """The IO loop (started on first use; a forked child gets its own loop
        and client, never the parent's)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._fs_lock = threading.Lock()
            # the parent's client shares its sockets: never close it here
            _FORK_LEFTOVERS.append(self._fs)
            self._fs = None
            self._client_obj = None
            self._finalizer = None  # bound to the parent's pid: a no-op here
        return io_loop()

    def _translate(self, exc: BaseException, path: str) -> errors.AdaptorError:
        return translate_error(exc, path, self.bucket, self._endpoint_display)

    def _run(self, coro: Coroutine[Any, Any, T], path: str = "",
             timeout: float | None = None) -> T:
        """Run a coroutine on the IO loop from a sync caller, translating errors.
        No timeout by default: botocore's connect/read timeouts bound every
        request."""
        if self._config_error:
            coro.close()
            raise errors.Unavailable(f"bad configuration: {self._config_error}", path)
        if _on_io_thread(self._loop):
            coro.close()
            raise RuntimeError("S3Adaptor called from its own IO loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except (KeyboardInterrupt, SystemExit):
            fut.cancel()
            raise
        except BaseException as exc:
            fut.cancel()
            raise self._translate(exc, path) from exc

    def _make_fs(self) -> Any:
        import s3fs

        config: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "retries": {"max_attempts": max(1, int(self.options.get("max_attempts") or 3)),
                        "mode": "standard"},
            "max_pool_connections": self._pool_size,
            "s3": {"addressing_style": self.addressing_style,
                   "payload_signing_enabled": bool(self.options.get("sign_payload", False))},
            # CRC32 trailers/headers are not understood by every S3-compatible server
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        client_kwargs: dict[str, Any] = {"region_name": self.region}
        if self.endpoint_url and self.endpoint_url.startswith("http:"):
            # plain http: never load a CA bundle (a stale AWS_CA_BUNDLE would fail)
            client_kwargs["verify"] = False
        elif self.endpoint_url and self.endpoint_url.startswith("https"):
            ca = self.options.get("ca_bundle")
            if not self.options.get("verify_tls", True):
                client_kwargs["verify"] = False
            elif ca:
                client_kwargs["verify"] = str(ca)
        from aiobotocore.session import AioSession

        session = AioSession()
        install_fast_listings(session)
        return s3fs.S3FileSystem(
            anon=self._anonymous,
            session=session,
            key=self._access_key, secret=self._secret_key, token=self._token,
            endpoint_url=self.endpoint_url,
            client_kwargs=client_kwargs,
            config_kwargs=config,
            use_listings_cache=False,
            skip_instance_cache=True,
            loop=self._loop,
            # we await s3fs ourselves; asynchronous=True also keeps s3fs from
            # registering an at-exit finaliser that would close, in a forked
            # child, connections its parent still uses
            asynchronous=True,
        )

    async def _client(self) -> Any:
        client = self._client_obj
        if client is not None:
            return client
        # one FS per adaptor; s3fs's set_session holds its own lock
        with self._fs_lock:
            if self._fs is None:
                self._fs = self._make_fs()
            fs = self._fs
        client = await fs.set_session()
        if self._client_obj is None:
            self._client_obj = client
            # closes the client when the adaptor is collected or at exit
            self._finalizer = weakref.finalize(
                self, _close_client, getattr(fs, "_s3creator", None), asyncio.get_running_loop(),
                os.getpid())
        return client

    def close(self) -> None:
        self._direct_gets.close()
        with self._fs_lock:
            fs, self._fs = self._fs, None
            self._client_obj = None
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()  # runs _close_client once
        del fs

    # -- direct GET bodies (adaptors.s3_direct) ---------------------------------------------
    async def _presign_get(self, key: str) -> str:
        s3 = await self._client()
        url: str = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=900)
        return url

    def _direct_get(self, path: str, key: str, start: int, end: int | None,
                    etag: str | None) -> DirectBody | None:
        """The body of a GET read in the calling thread, or ``None`` to use botocore
        (not enabled here, or the server's answer was not a plain 200/206)."""
        if self._direct_ok is False or self._direct_gets.tls_failed:
            return None
        url = self._run(self._presign_get(key), path)
        if self._direct_ok is None:
            self._direct_ok = enabled_for(url)
            if not self._direct_ok:
                return None
        return self._direct_gets.get(url, start, end, etag)

    # -- key mapping ------------------------------------------------------------------
    def _key(self, path: str) -> str:
        rel = path.strip("/")
        if rel:
            segs = rel.split("/")
            if any(s in ("", ".", "..") or "\x00" in s or "\\" in s for s in segs):
                raise errors.PermissionDenied("path escapes the site", path)
        return self.prefix + rel

    def _dir_prefix(self, path: str) -> str:
        key = self._key(path)
        return key + "/" if path.strip("/") else self.prefix

    def _rel(self, key: str) -> str:
        return key[len(self.prefix):]

    # -- coroutines: primitives -------------------------------------------------------
    async def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        s3 = await self._client()
        try:
            resp: dict[str, Any] = await s3.head_object(Bucket=self.bucket, Key=key)
            return resp
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code") or "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    async def _first_under(self, prefix: str, n: int = 1) -> list[dict[str, Any]]:
        """Up to ``n`` keys under ``prefix`` (a GET: errors carry real codes)."""
        s3 = await self._client()
        resp = await s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=n)
        contents: list[dict[str, Any]] = resp.get("Contents", []) or []
        return contents

    async def _gather(self, *aws: Awaitable[Any]) -> list[Any]:
        """Run awaitables concurrently; on failure raise the most telling error
        (site-level errors first: a HEAD cannot tell a bad key from a denial)."""
        results = await asyncio.gather(*aws, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            ranked = sorted(failures, key=lambda e: 0 if isinstance(
                self._translate(e, ""), errors.Unavailable) else 1)
            raise ranked[0]
        return list(results)

    async def _kind(self, path: str) -> tuple[str | None, dict[str, Any] | None]:
        """("file", head) / ("dir", marker-or-None) / (None, None)."""
        if path.strip("/") == "":
            await self._first_under(self.prefix)  # raises when the bucket is missing
            return "dir", None
        key = self._key(path)
        head, under = await self._gather(self._head(key), self._first_under(key + "/"))
        if head is not None:
            return "file", head
        if under:
            marker = under[0] if under[0].get("Key") == key + "/" else None
            return "dir", marker
        return None, None

    async def _is_dir(self, path: str) -> bool:
        if path.strip("/") == "":
            await self._first_under(self.prefix)
            return True
        return bool(await self._first_under(self._key(path) + "/"))

    async def _list_pages(self, prefix: str, delimiter: str | None
                          ) -> AsyncGenerator[tuple[list[dict[str, Any]], list[str]], None]:
        """Every key (and common prefix) under ``prefix``, a page at a time.  Each
        page arrives raw (see ``_RAW_LISTING``); the next one is asked for as soon
        as its token is seen in the raw body, so the server prepares it while
        this one is parsed and used.  No cache: every call asks the server."""
        s3 = await self._client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                  "EncodingType": "url"}
        if delimiter:
            kwargs["Delimiter"] = delimiter

        async def page(token: str | None) -> dict[str, Any]:
            from botocore.exceptions import ClientError

            args = dict(kwargs, ContinuationToken=token) if token else dict(kwargs)
            flag = _RAW_LISTING.set(True)
            try:
                while True:
                    args["MaxKeys"] = self.list_page_keys
                    try:
                        resp: dict[str, Any] = await s3.list_objects_v2(**args)
                        return resp
                    except ClientError as exc:
                        code = (exc.response.get("Error", {}) or {}).get("Code")
                        if code != "InvalidArgument" or self.list_page_keys <= S3_STANDARD_PAGE:
                            raise
                        log.info("site %s: the server refuses %d keys per listing page; "
                                 "asking for %d", self.name, self.list_page_keys,
                                 S3_STANDARD_PAGE)
                        self.list_page_keys = S3_STANDARD_PAGE
            finally:
                _RAW_LISTING.reset(flag)

        pending: asyncio.Future[dict[str, Any]] | None = asyncio.ensure_future(page(None))
        try:
            while pending is not None:
                resp = await pending
                pending = None
                body = resp.get(RAW_BODY)
                if body is None:  # parsed by botocore after all
                    contents = [dict(o) for o in resp.get("Contents", []) or []]
                    prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", []) or []]
                    if str(resp.get("EncodingType", "")).lower() == "url":
                        _url_decode(contents, prefixes)  # asked for explicitly: ours to undo
                    token = resp.get("NextContinuationToken")
                    if resp.get("IsTruncated") and token:
                        pending = asyncio.ensure_future(page(token))
                else:
                    early = peek_next_token(body)
                    if early:
                        pending = asyncio.ensure_future(page(early))
                        await asyncio.sleep(0)  # let it send its request first
                    contents, prefixes, truncated, token = parse_listing(body)
                    if not (truncated and token):
                        token = None
                    if token != early:  # the scan misread the page: the parse decides
                        if pending is not None:
                            _drop(pending)
                            pending = None
                        if token:
                            pending = asyncio.ensure_future(page(token))
                yield contents, prefixes
        finally:
            if pending is not None:
                _drop(pending)

    async def _list_keys(self, prefix: str, delimiter: str | None
                         ) -> tuple[list[dict[str, Any]], list[str]]:
        """Every key (and common prefix) under ``prefix``."""
        contents: list[dict[str, Any]] = []
        prefixes: list[str] = []
        async with aclosing(self._list_pages(prefix, delimiter)) as pages:
            async for page_contents, page_prefixes in pages:
                contents.extend(page_contents)
                prefixes.extend(page_prefixes)
        return contents, prefixes

    async def _put_object(self, key: str, data: bytes, content_type: str | None) -> None:
        s3 = await self._client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data}
        if content_type:
            kwargs["ContentType"] = content_type
        await s3.put_object(**kwargs)

    async def _create_multipart(self, key: str, content_type: str | None) -> str:
        s3 = await self._client()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_type:
            kwargs["ContentType"] = content_type
        resp = await s3.create_multipart_upload(**kwargs)
        return str(resp["UploadId"])

    async def _upload_part(self, key: str, upload_id: str, number: int, data: bytearray,
                           state: _PartState) -> str:
        state.started.set()  # no await before the try: cancellation cannot slip in
        try:
            s3 = await self._client()
            resp = await s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                        PartNumber=number, Body=_PartBody(data),
                                        ContentLength=len(data))
            return str(resp["ETag"])
        finally:
            state.finished.set()

    async def _complete_multipart(self, key: str, upload_id: str,
                                  parts: list[dict[str, Any]]) -> None:
        s3 = await self._client()
        await s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                           MultipartUpload={"Parts": parts})

    async def _abort_multipart(self, key: str, upload_id: str) -> None:
        from botocore.exceptions import ClientError

        s3 = await self._client()
        try:
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in ("NoSuchUpload", "404"):
                raise

    async def _delete_keys(self, keys: list[str]) -> None:
        s3 = await self._client()
        batches = [keys[i:i + DELETE_BATCH] for i in range(0, len(keys), DELETE_BATCH)]

        async def one(batch: list[str]) -> None:
            if len(batch) == 1:
                await s3.delete_object(Bucket=self.bucket, Key=batch[0])
                return
            resp = await s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            failed = [e for e in resp.get("Errors", []) or []
                      if e.get("Code") not in ("NoSuchKey",)]
            if failed:
                from botocore.exceptions import ClientError

                err = failed[0]
                raise ClientError({"Error": {"Code": err.get("Code", ""),
                                             "Message": err.get("Message", "")}},
                                  "DeleteObjects")

        await self._bounded(one(b) for b in batches)

    async def _delete_tree(self, top: str, keys: list[str]) -> None:
        """Delete ``keys`` (all under the directory prefix ``top``, ending in "/"),
        then every directory key of the tree, deepest first.  S3 ignores the
        missing ones; servers backed by a hierarchical store (SeaweedFS) need
        these deletes to drop the now empty directories, which they would keep
        listing otherwise."""
        await self._delete_keys([k for k in keys if not k.endswith("/")])
        dirs = {top}
        for k in keys:
            parts = k[len(top):].split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add(top + "/".join(parts[:i]) + "/")
        by_depth: dict[int, list[str]] = {}
        for d in dirs:
            by_depth.setdefault(d.count("/"), []).append(d)
        for depth in sorted(by_depth, reverse=True):
            await self._delete_keys(sorted(by_depth[depth]))

    async def _bounded(self, coros: Any, limit: int = TREE_CONCURRENCY) -> None:
        sem = asyncio.Semaphore(limit)

        async def guarded(c: Awaitable[Any]) -> Any:
            async with sem:
                return await c

        await self._gather(*(guarded(c) for c in coros))

    async def _copy_key(self, src_bucket: str, src_key: str, dst_key: str, size: int,
                        s3: Any = None) -> None:
        """Server-side copy of one object (multipart UploadPartCopy when big)."""
        s3 = s3 or await self._client()
        source = {"Bucket": src_bucket, "Key": src_key}
        if src_key.endswith("/") and size == 0:
            # a directory marker: write a new one (SeaweedFS cannot copy directories)
            await s3.put_object(Bucket=self.bucket, Key=dst_key, Body=b"")
            return
        if size <= self.max_single_copy:
            await s3.copy_object(Bucket=self.bucket, Key=dst_key, CopySource=source,
                                 MetadataDirective="COPY")
            return
        head = await s3.head_object(Bucket=src_bucket, Key=src_key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": dst_key}
        if head.get("ContentType"):
            kwargs["ContentType"] = head["ContentType"]
        if head.get("Metadata"):
            kwargs["Metadata"] = head["Metadata"]
        upload_id = (await s3.create_multipart_upload(**kwargs))["UploadId"]
        piece = max(self.copy_part_size, math.ceil(size / MAX_PARTS))
        ranges = [(i + 1, off, min(off + piece, size) - 1)
                  for i, off in enumerate(range(0, size, piece))]
        etags: dict[int, str] = {}

        async def part(number: int, first: int, last: int) -> None:
            resp = await s3.upload_part_copy(
                Bucket=self.bucket, Key=dst_key, UploadId=upload_id, PartNumber=number,
                CopySource=source, CopySourceRange=f"bytes={first}-{last}",
                CopySourceIfMatch=head["ETag"])
            etags[number] = resp["CopyPartResult"]["ETag"]

        try:
            await self._bounded((part(*r) for r in ranges), self.upload_concurrency)
            await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=dst_key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]}
                                           for n in sorted(etags)]})
        except BaseException:
            await asyncio.shield(self._abort_multipart(dst_key, upload_id))
            raise

    async def _keep_dir(self, path: str) -> None:
        """After removing something from ``path``: keep the directory listed even
        when it was implicit (no marker) and is now empty."""
        if path.strip("/") == "":
            return
        prefix = self._key(path) + "/"
        if not await self._first_under(prefix):
            await self._put_object(prefix, b"", None)

    # -- required operations -------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        kind, info = self._run(self._kind(path), path)
        if kind is None:
            raise errors.NotFound("no such file or directory", path)
        name = base_name(path)
        if kind == "dir":
            mtime = _utc(info.get("LastModified")) if info else None
            return Entry(name, True, 0, mtime, None)
        assert info is not None
        return Entry(name, False, int(info.get("ContentLength") or 0),
                     _utc(info.get("LastModified")), _unquote(info.get("ETag")),
                     None, info.get("ContentType"))

    @staticmethod
    def _file_entries(prefix: str, contents: list[dict[str, Any]],
                      files: dict[str, Entry]) -> bool:
        """Add the objects directly under ``prefix`` to ``files``; True when the
        directory's own marker is among them."""
        marker = False
        cut = len(prefix)
        for obj in contents:
            name = obj["Key"][cut:]
            if not name:
                marker = True
                continue
            if "/" in name or name in (".", "..") or name.startswith(PROBE_PREFIX):
                continue
            when = obj.get("LastModified")
            if when is not None and when.tzinfo is not UTC:
                when = _utc(when)
            files[name] = Entry(name, False, int(obj.get("Size") or 0), when,
                                _unquote(obj.get("ETag")))
        return marker

    @staticmethod
    def _dir_entries(prefix: str, prefixes: list[str], files: Container[str]) -> list[Entry]:
        dirs: dict[str, Entry] = {}
        for p in prefixes:
            name = p[len(prefix):].rstrip("/")
            if not name or "/" in name or name in (".", "..") or name in files:
                continue
            dirs[name] = Entry(name, True)
        return list(dirs.values())

    async def _entry_pages(self, path: str) -> AsyncGenerator[list[Entry], None]:
        """The entries of a directory, a listing page at a time (files as their
        page arrives, the sub-directories last), while the next page is on its
        way.  NotFound/NotADirectory come before any entry."""
        prefix = self._dir_prefix(path)
        names: set[str] = set()
        prefixes: list[str] = []
        marker = False
        async with aclosing(self._list_pages(prefix, "/")) as pages:
            async for page_contents, page_prefixes in pages:
                files: dict[str, Entry] = {}
                marker = self._file_entries(prefix, page_contents, files) or marker
                prefixes.extend(page_prefixes)
                if files:  # a file under it: the directory exists
                    names.update(files)
                    yield list(files.values())
        dirs = self._dir_entries(prefix, prefixes, names)
        if not names and not dirs and not marker and path.strip("/"):
            if await self._head(self._key(path)) is not None:
                raise errors.NotADirectory("not a directory", path)
            raise errors.NotFound("no such directory", path)
        if dirs:
            yield dirs

    def list(self, path: str) -> list[Entry]:
        async def go() -> list[Entry]:
            entries: list[Entry] = []
            async with aclosing(self._entry_pages(path)) as pages:
                async for page in pages:
                    entries.extend(page)
            return entries

        return self._run(go(), path)

    def iter_list(self, path: str) -> Iterator[Entry]:
        """:meth:`list` as an iterator that yields each page's entries as soon
        as the page is read, while the next one is fetched (the gateway renders
        a big PROPFIND meanwhile).  Nothing is cached; errors as :meth:`list`'s,
        raised before the first entry (or, for a page failing midway, there)."""
        pages = self._entry_pages(path)

        async def step() -> list[Entry] | None:
            try:
                return await pages.__anext__()
            except StopAsyncIteration:
                return None

        try:
            while (page := self._run(step(), path)) is not None:
                yield from page
        finally:
            self._close_agen(pages)

    def _close_agen(self, agen: AsyncGenerator[Any, None]) -> None:
        """Close an async generator of the IO loop (stops a listing's fetch ahead)."""
        loop = self._loop
        if loop.is_closed() or not loop.is_running():
            return
        if _on_io_thread(loop):
            loop.create_task(agen.aclose())
            return
        try:
            asyncio.run_coroutine_threadsafe(agen.aclose(), loop).result(30)
        except Exception as exc:
            log.debug("closing a listing failed: %s", exc.__class__.__name__)

    def open_read(self, path: str, offset: int = 0, length: int | None = None) -> Reader:
        key = self._key(path)
        if path.strip("/") == "":
            raise errors.IsADirectory("is a directory", path)
        if length is not None and length <= 0:
            self.stat(path)  # still NotFound for a missing file
            return _S3Reader(self, path, key, None, offset, offset)
        end = None if length is None else offset + length
        direct = self._direct_get(path, key, offset, end, None)
        if direct is not None:
            return _S3Reader(self, path, key, None, offset, end, direct)

        async def go() -> dict[str, Any] | None:
            from botocore.exceptions import ClientError

            s3 = await self._client()
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if offset or length is not None:
                end = "" if length is None else str(offset + length - 1)
                kwargs["Range"] = f"bytes={offset}-{end}"
            try:
                resp: dict[str, Any] = await s3.get_object(**kwargs)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code") or "")
                if code == "InvalidRange":  # offset at or past the end
                    if await self._head(key) is None:
                        raise errors.NotFound("no such file", path) from exc
                    return None
                if code in _NOT_FOUND_CODES and await self._is_dir(path):
                    raise errors.IsADirectory("is a directory", path) from exc
                raise
            return resp

        resp = self._run(go(), path)
        return _S3Reader(self, path, key, resp, offset, end)

    def open_write(self, path: str, size_hint: int | None = None) -> Writer:
        self.check_writable(path)
        if path.strip("/") == "":
            raise errors.IsADirectory("is a directory", path)
        key = self._key(path)

        async def check() -> tuple[bool, bool]:
            parent_ok, is_dir = await self._gather(self._is_dir(parent_of(path)),
                                                   self._first_under(key + "/"))
            return bool(parent_ok), bool(is_dir)

        parent_ok, is_dir = self._run(check(), path)
        if is_dir:
            raise errors.IsADirectory("is a directory", path)
        if not parent_ok:
            raise errors.ParentMissing("parent directory does not exist", path)
        return _S3Writer(self, path, key, size_hint)

    def mkdir(self, path: str) -> None:
        self.check_writable(path)
        if path.strip("/") == "":
            raise errors.Exists("the site root exists", path)

        async def go() -> None:
            (kind, _), parent_ok = await self._gather(self._kind(path),
                                                      self._is_dir(parent_of(path)))
            if kind is not None:
                raise errors.Exists("already exists", path)
            if not parent_ok:
                raise errors.ParentMissing("parent directory does not exist", path)
            await self._put_object(self._key(path) + "/", b"", None)

        self._run(go(), path)

    def remove(self, path: str, recursive: bool = False) -> None:
        self.check_writable(path)
        if path.strip("/") == "":
            raise errors.PermissionDenied("cannot remove a site root", path)
        key = self._key(path)

        async def go() -> None:
            head, under = await self._gather(self._head(key), self._first_under(key + "/", 2))
            if head is not None:
                await self._delete_keys([key])
            elif not under:
                raise errors.NotFound("no such file or directory", path)
            else:
                if not recursive and any(o["Key"] != key + "/" for o in under):
                    raise errors.NotEmpty("directory not empty", path)
                contents, _ = await self._list_keys(key + "/", None)
                await self._delete_tree(key + "/", [str(o["Key"]) for o in contents])
            await self._keep_dir(parent_of(path))

        self._run(go(), path)

    def rename(self, src: str, dst: str, overwrite: bool = False) -> None:
        self.check_writable(src)
        self.check_writable(dst)
        self._transfer(self, src, dst, overwrite, move=True)

    def copy(self, src: str, dst: str, overwrite: bool = False) -> None:
        self.check_writable(dst)
        self._transfer(self, src, dst, overwrite, move=False, files_only=True)

    def copy_from(self, source: Adaptor, src: str, dst: str, overwrite: bool = False, *,
                  checksum: str | None = None,
                  cancel: threading.Event | None = None) -> str | None:
        """Server-side copy from another S3 site on the same endpoint (another
        bucket or prefix) with the same credentials; Unsupported otherwise.
        Verifies no checksum itself (returns None); ``cancel`` is not watched
        (a CopyObject is one request)."""
        if not isinstance(source, S3Adaptor) or not self.same_endpoint(source):
            raise errors.Unsupported("third-party copy only between S3 sites on the same "
                                     "endpoint with the same credentials", src)
        self.check_writable(dst)
        self._transfer(source, src, dst, overwrite, move=False, files_only=True)
        return None

    def _transfer(self, source: S3Adaptor, src: str, dst: str, overwrite: bool,
                  move: bool, files_only: bool = False) -> None:
        """Server-side copy (and for ``move`` delete) of a file or tree."""
        if src.strip("/") == "":
            raise errors.PermissionDenied("cannot move or copy a site root", src)
        if dst.strip("/") == "":
            raise errors.Exists("target is the site root", dst)
        same_site = source is self
        src_key, dst_key = source._key(src), self._key(dst)
        if same_site and src_key == dst_key:
            if not overwrite:
                raise errors.Exists("source and target are the same", dst)
            return
        if same_site and (dst_key.startswith(src_key + "/") or src_key.startswith(dst_key + "/")):
            raise errors.PermissionDenied("cannot move or copy a directory into itself "
                                          "or over its own parent", dst)

        async def go() -> None:
            (skind, shead), (dkind, _), parent_ok = await self._gather(
                source._kind(src), self._kind(dst), self._is_dir(parent_of(dst)))
            if skind is None:
                raise errors.NotFound("source does not exist", src)
            if files_only and skind == "dir":
                raise errors.IsADirectory("server-side copy is for files", src)
            if not parent_ok:
                raise errors.ParentMissing("parent directory does not exist", dst)
            if dkind is not None and not overwrite:
                raise errors.Exists("target exists", dst)
            s3 = await self._client()
            if dkind == "dir":
                contents, _ = await self._list_keys(dst_key + "/", None)
                await self._delete_tree(dst_key + "/", [str(o["Key"]) for o in contents])
            elif dkind == "file" and skind == "dir":
                await self._delete_keys([dst_key])
            if skind == "file":
                assert shead is not None
                await self._copy_key(source.bucket, src_key, dst_key,
                                     int(shead.get("ContentLength") or 0), s3)
                if move:
                    await source._delete_keys([src_key])
            else:
                contents, _ = await source._list_keys(src_key + "/", None)
                pairs = [(str(o["Key"]), dst_key + "/" + str(o["Key"])[len(src_key) + 1:],
                          int(o.get("Size") or 0)) for o in contents]
                try:
                    await self._bounded(self._copy_key(source.bucket, k, d, n, s3)
                                        for k, d, n in pairs)
                except BaseException:
                    # leave no half-copied tree behind; the source is untouched
                    await asyncio.shield(self._delete_tree(dst_key + "/",
                                                           [d for _, d, _ in pairs]))
                    raise
                if move:
                    await source._delete_tree(src_key + "/", [k for k, _, _ in pairs])
            if move:
                await source._keep_dir(parent_of(src))

        self._run(go(), src)

    # -- optional ---------------------------------------------------------------------
    def checksum(self, path: str, algorithm: str) -> str | None:
        """MD5 of single-part uploads (their ETag); None for anything else."""
        if algorithm.lower() != "md5":
            return None
        entry = self.stat(path)
        if entry.is_dir or not entry.etag or not _MD5_RE.match(entry.etag):
            return None
        return entry.etag

    def probe(self) -> None:
        """Bucket reachable and listable with these credentials; unless read-only,
        a probe object can be written and removed."""
        try:
            self._run(self._first_under(self.prefix), "/")
        except errors.Unavailable:
            raise
        except errors.AdaptorError as exc:
            raise errors.Unavailable(f"cannot list the bucket: {exc.message}") from exc
        if self.read_only:
            return
        key = f"{self.prefix}{PROBE_PREFIX}{uuid.uuid4().hex}"

        async def write_probe() -> None:
            await self._put_object(key, b"", None)
            await self._delete_keys([key])

        try:
            self._run(write_probe(), "/")
        except errors.Unavailable:
            raise
        except errors.AdaptorError as exc:
            raise errors.Unavailable(f"bucket is not writable: {exc.message}") from exc


__all__ = ["DEFAULT_PART_SIZE", "DEFAULT_UPLOAD_CONCURRENCY", "S3Adaptor", "translate_error"]
