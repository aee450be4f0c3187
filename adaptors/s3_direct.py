"""Object bodies of S3 GETs read with blocking socket calls in the caller's thread.

Why: through aiobotocore every body chunk crosses aiohttp's stream reader, an
asyncio transport and a thread hop to the IO loop; that costs about 0.35 CPU-s
per GiB, against 0.14 s for ``http.client`` reading the same body straight
into the ``bytes`` handed on (measured on SeaweedFS, 1 MiB reads).  On a busy
gateway that CPU is what bounds a GET.

How: the request is signed by botocore as a presigned URL (query-string
SigV4, on the IO loop: credentials may refresh there), and sent on a pooled
keep-alive ``http.client`` connection with ``Range``/``If-Match`` headers.
Only the happy path is handled here: any answer but 200/206, and any fault
while connecting, returns ``None`` and the caller repeats the request through
botocore, which retries, maps errors (``translate_error``, the one place)
and knows every S3 quirk.  Faults in the middle of a body are the reader's to
resume.

Not used (the caller stays on aiobotocore) when a proxy applies to the
endpoint (botocore honours proxies; this path does not) or when
``FEDGATE_S3_DIRECT_GET=0``.

Presigned URLs carry a signature and the access key id: they are never
logged, and never put in an error message.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import ssl
import threading
import urllib.request
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: idle keep-alive connections kept per endpoint
POOL_SIZE = 8
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def enabled_for(url: str) -> bool:
    """True when GET bodies for ``url``'s host may bypass aiobotocore."""
    if os.environ.get("FEDGATE_S3_DIRECT_GET", "1") == "0":
        return False
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    proxies = urllib.request.getproxies()
    return not (proxies.get(parts.scheme) or proxies.get("all")) or bool(
        urllib.request.proxy_bypass(parts.hostname))


class DirectBody:
    """The body of one 200/206 answer.  ``read`` blocks in the caller's thread;
    at the end of a fully read body the connection goes back to the pool."""

    def __init__(self, pool: DirectGets, key: tuple[str, str, int],
                 conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 start: int, end: int, etag: str | None) -> None:
        self._pool = pool
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self.end = end  # exclusive end of the body in the object
        self.etag = etag
        self._left = end - start

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left for ``size < 0``).  Raises
        ``OSError``/``http.client.HTTPException`` on a fault, and ``ConnectionError``
        when the server closed the body early."""
        if self._left <= 0:
            self.close()
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._resp.read(want)
        if not data:
            raise ConnectionError("the S3 server closed the body early")
        self._left -= len(data)
        if self._left <= 0:
            self.close()
        return data

    def close(self) -> None:
        """Done with the body: the connection goes back to the pool when the body
        was read to its end, else it is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.give_back(self._key, conn, reusable=self._left <= 0
                                 and self._resp.isclosed())


class DirectGets:
    """Keep-alive ``http.client`` connections for one site, and the GET itself."""

    def __init__(self, connect_timeout: float, read_timeout: float,
                 verify_tls: bool = True, ca_bundle: str | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._verify = verify_tls
        self._ca = ca_bundle
        self._ssl: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.tls_failed = False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if not self._verify:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                # the bundle botocore would use: the option, AWS_CA_BUNDLE, else its own
                from botocore.httpsession import get_cert_path

                ca = self._ca or os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
                ctx = ssl.create_default_context(cafile=ca if isinstance(ca, str) else None)
            self._ssl = ctx
        return self._ssl

    def _take(self, key: tuple[str, str, int]) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, host, port = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout,
                                               context=self._context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        return conn, False

    def give_back(self, key: tuple[str, str, int], conn: http.client.HTTPConnection,
                  reusable: bool) -> None:
        if reusable and self._pid == os.getpid():
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if len(idle) < POOL_SIZE:
                    idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        if self._pid == os.getpid():
            for conns in idle.values():
                for c in conns:
                    c.close()

    def get(self, url: str, start: int, end: int | None,
            etag: str | None = None) -> DirectBody | None:
        """GET bytes ``start``..``end`` (exclusive; ``None`` = to the end) of the
        presigned ``url``; ``None`` when the answer is not a usable 200/206 (the
        caller asks again through botocore)."""
        parts = urlsplit(url)
        scheme = parts.scheme
        key = (scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
        target = parts.path + ("?" + parts.query if parts.query else "")
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if etag:
            headers["If-Match"] = etag
        for _ in range(2):  # a pooled connection may have been closed by the server
            conn, reused = self._take(key)
            try:
                if conn.sock is None:
                    conn.connect()
                conn.sock.settimeout(self.read_timeout)
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if isinstance(exc, ssl.SSLError):
                    # same bundle as botocore's, yet refused: never try again here
                    self.tls_failed = True
                    log.info("direct S3 GETs off for %s: TLS failed (%s); using botocore",
                             key[1], exc.__class__.__name__)
                    return None
                if reused:
                    continue
                log.debug("direct S3 GET could not be sent (%s); using botocore",
                          exc.__class__.__name__)
                return None
            body = self._body(key, conn, resp, start, "Range" in headers)
            if body is None:
                self._discard(key, conn, resp)
            return body
        return None

    def _body(self, key: tuple[str, str, int], conn: http.client.HTTPConnection,
              resp: http.client.HTTPResponse, start: int, ranged: bool) -> DirectBody | None:
        if resp.getheader("Transfer-Encoding", "").lower() == "chunked" or \
                resp.getheader("Content-Encoding", "identity").lower() != "identity":
            return None
        length = resp.getheader("Content-Length")
        if resp.status == 200 and not ranged and length is not None:
            return DirectBody(self, key, conn, resp, 0, int(length), resp.getheader("ETag"))
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.getheader("Content-Range", ""))
            if m and int(m.group(1)) == start:
                return DirectBody(self, key, conn, resp, start, int(m.group(2)) + 1,
                                  resp.getheader("ETag"))
        return None

    def _discard(self, key: tuple[str, str, int], conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse) -> None:
        """Read a small error answer to the end (keeps the connection), else close."""
        try:
            length = int(resp.getheader("Content-Length") or -1)
            if resp.status >= 300 and 0 <= length <= 65536:
                resp.read()
                self.give_back(key, conn, reusable=resp.isclosed())
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        conn.close()

