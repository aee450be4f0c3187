"""``gridftp`` sites: GridFTP (``gsiftp://`` with GSI, or ``ftp://``) through gfal2.

Site options (see :attr:`GridFTPAdaptor.OPTIONS`)::

    url: gsiftp://host:2811/abs/path   # or ftp://host:port/abs/path
    x509_proxy: /tmp/x509up_u1000      # gsiftp: the user's X.509 proxy
    x509_cert_dir: /etc/grid-security/certificates   # optional trust anchors
    user: alice                        # ftp: optional (anonymous without)
    password: ${FTP_PASSWORD}          # ftp: secret
    parallel_streams: 4                # TCP streams of server-to-server copies
    tcp_buffer_size: 0                 # bytes for copies, 0: the system default
    copy_checksum: adler32             # verification of copies (or none)
    timeout: 300                       # seconds a copy may take
    escape_non_ascii: true             # see "Names" below

How it is built
---------------
* **Contexts and threads.**  The adaptor is synchronous and called from many
  threads.  gfal2 documents its context as thread-safe, but we do not lean on
  that (its plugins and the Python binding keep per-handle state we did not
  audit): every adaptor owns a small *pool* of gfal2 contexts, all configured
  for its own site.  An operation checks one out, uses it from its thread
  only and gives it back; open readers and writers keep theirs until closed;
  at most ``max_connections`` idle contexts (each with its logged-in FTP
  sessions) are kept.  Creating and freeing a context (plugin load and
  unload, which activate and deactivate Globus modules) is serialised by a
  module lock, and one context lives as long as the process so the Globus
  modules are never torn down and brought up again while callbacks of
  earlier transfers may still be queued.  The binding releases the GIL in
  every blocking call (checked in its source), so threads transfer in
  parallel.  A context whose connection was lost is dropped, not reused.
* **Lost connections** (the server closed a cached session: "end-of-file
  was reached") are :class:`errors.Transient`, and the idle contexts are
  dropped with the one that saw it; ``stat``, ``checksum``, listings and
  opening a read, which are safe to repeat, are retried once on a new
  context (mkdir, rename, unlink and rmdir are not: the first attempt may
  have been carried out).
* **Credentials** are set per URL prefix with gfal2's credential API
  (``cred_set``): ``X509_CERT``/``X509_KEY`` = the proxy for ``gsiftp://``,
  ``USER``/``PASSWORD`` for ``ftp://``.  Nothing goes into a URL or the
  process environment; the password never appears in a log or error.  The
  one process-wide setting is ``X509_CERT_DIR`` when ``x509_cert_dir`` is
  given (Globus reads trust anchors only from the environment).  Before any
  network call a ``gsiftp://`` site checks its proxy file: missing, unreadable
  or expired (notAfter of its first certificate, re-read when the file
  changes) raises :class:`errors.Unavailable` saying so and how to renew it.
* **Listing** is gfal2 ``opendir``/``readpp``: one MLSD per directory, each
  entry arriving with its stat facts -- run in helper processes
  (``adaptors/_gridftp_lister.py``, at most :data:`MAX_LISTERS` per site,
  kept between listings), never in this one: gfal2 2.21 aborts the process
  that runs an MLSD the server fails early (it frees the MLSD's request
  state while Globus still holds it; the server fails an MLSD whenever an
  entry is renamed or deleted while it lists, so any busy folder triggers
  it -- the helper's docstring has the details).  A helper that dies is
  replaced and the listing retried once.
* **Reads** stream one GET.  gfal2's seek/pread on GridFTP crashes the
  process (see :class:`_GridFTPReader`), so a read from an offset below
  8 MiB discards the bytes before it, and one from further on is a partial
  GET (ERET) run by ``globus-url-copy`` (same Globus client library; the URL
  and any password reach it on stdin), streamed from its stdout.
  ``read(n)`` returns at most 1 MiB per call (larger gfal2 buffers
  page-fault heavily).
* **Writes** go to a hidden ``.fedgate-tmp-*`` file in the target folder,
  checked for size, then renamed onto the target; abort removes it.  A pump
  thread per upload feeds gfal2, so the caller's next block arrives while
  the last one is sent (streaming into a ``globus-url-copy`` process instead
  measured slower through the gateway on 2 cores: one more process copying
  every byte).
* **Copies**: ``copy()`` and ``copy_from()`` are gfal2 ``filecopy`` server to
  server (third-party, no data through this process) with ``parallel_streams``,
  into a temporary name renamed on success after verification: the source
  server computes ``copy_checksum`` (ADLER32 by default) while the data flows,
  the target server computes it afterwards, a mismatch raises
  :class:`errors.ChecksumMismatch` and removes the copy.
  ``copy_from()`` raises :class:`errors.Unsupported` when the source is not a
  GridFTP site or the servers refuse a third-party transfer: callers then fall
  back to :func:`adaptors.base.stream_copy` (it does not fall back itself).
* **Names.**  The Globus server drops every byte >= 0x80 from the commands it
  receives (checked with curl and ftplib as well: RFC 2640 UTF-8 paths cannot
  reach it; its listings do carry UTF-8).  With ``escape_non_ascii`` (default
  on) the adaptor stores each non-ASCII character of a name as its UTF-8
  bytes written ``%XX`` (upper-case hex) and decodes such runs back when
  listing, so every UTF-8 name round-trips through the gateway.  The price:
  a file written on the server itself with a non-ASCII name is listed but
  cannot be opened, and an ASCII name that happens to contain such a run
  (``a%C3%BCb``) is shown decoded (``aüb``) -- it still opens under that
  name.  Turn the option off for servers that accept UTF-8 paths.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

from adaptors import errors
from adaptors.base import (
    TEMP_PREFIX,
    Adaptor,
    AdaptorContext,
    Capability,
    Entry,
    OptionSpec,
    Reader,
    Writer,
    base_name,
    join,
    parent_of,
    utc_from_timestamp,
)

try:  # Debian's python3-gfal2; imported lazily so the module loads without it
    import gfal2
except ImportError:  # pragma: no cover - reported by probe()/operations
    gfal2 = None

log = logging.getLogger(__name__)

#: reads from at least this offset use a partial GET by globus-url-copy; below
#: it the bytes before the offset are read and discarded (see _GridFTPReader)
PARTIAL_GET_MIN_OFFSET = 8 * 1024 * 1024
#: listings retried when the server fails an MLSD because an entry vanished
LIST_RACE_RETRIES = 8
#: how often a running third-party copy looks at its cancel event (seconds)
CANCEL_POLL_S = 0.2
_GUC = shutil.which("globus-url-copy")
#: largest gfal2 read per call: bigger buffers are fresh mmaps whose page
#: faults cost more than the transfer (4 MiB reads ran 3-6x slower here)
READ_CHUNK = 1024 * 1024
#: blocks a writer may hold queued for its pump thread (see _GridFTPWriter)
WRITE_QUEUE_BLOCKS = 4
#: algorithm names the Globus server knows (FEAT CKSM)
_CHECKSUMS = {"adler32": "ADLER32", "md5": "MD5", "sha1": "SHA1", "sha256": "SHA256",
              "sha512": "SHA512"}
_DEFAULT_PORTS = {"gsiftp": 2811, "ftp": 21}
#: serialises creating and freeing gfal2 contexts (plugin load and unload
#: activate and deactivate Globus modules)
_CREATE_LOCK = threading.RLock()  # re-entrant: a garbage-collected adaptor frees inside
#: one context kept for the life of the process (see _new_context)
_ANCHOR: list[Any] = []
#: the helper process that runs listings (see adaptors/_gridftp_lister.py)
_LISTER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_gridftp_lister.py")
#: listing helper processes per adaptor (listings beyond this many wait)
MAX_LISTERS = 4

_SERVER_ERRNO = re.compile(r"GridFTP-Errno:\s*(\d+)")
_SERVER_REASON = re.compile(r"GridFTP-Error-String:\s*(.+?)(?:\s{2,}|\s*\d{3} End|$)")
_URL_RE = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.I)
_AUTH_RE = re.compile(r"\b530\b|login incorrect|authenticat|gss|credential|proxy|"
                      r"certificate|globus_gsi", re.I)
_PATHISH = re.compile(r"\S*/\S*")
#: the server or the network dropped the connection (a cached session the
#: server timed out, a server process that died): worth one retry
_CONN_LOST = re.compile(r"end[- ]of[- ]file|end of file occurred|connection (?:was )?(?:reset|"
                        r"closed)|broken pipe|unexpected eof", re.I)
_ESCAPED_RUN = re.compile(r"(?:%[89A-F][0-9A-F])+")  # exactly what _server_name writes


def _reason(message: str, code: int) -> str:
    """A short, secret-free reason for an error message from gfal2/Globus."""
    m = _SERVER_REASON.search(message)
    if m:
        return m.group(1).strip()
    if code and code in errors.ERRNO_ERRORS:
        return os.strerror(code)
    text = _URL_RE.sub("<url>", message).strip()
    return text[:300] or "gridftp error"


class GridFTPAdaptor(Adaptor):
    """A folder on a GridFTP server (see the module docstring)."""

    type_name = "gridftp"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "url": OptionSpec(str, required=True,
                          help="gsiftp://host[:port]/abs/path or ftp://host[:port]/abs/path"),
        "x509_proxy": OptionSpec(str, help="X.509 proxy file (gsiftp://)"),
        "x509_cert_dir": OptionSpec(str, help="trusted CA folder (sets X509_CERT_DIR)"),
        "user": OptionSpec(str, help="ftp:// user name (anonymous when absent)"),
        "password": OptionSpec(str, secret=True, help="ftp:// password"),
        "parallel_streams": OptionSpec(int, default=4,
                                       help="TCP streams of server-to-server copies (gfal2 "
                                            "reads and writes through the gateway use one)"),
        "tcp_buffer_size": OptionSpec(int, default=0,
                                      help="TCP buffer of server-to-server copies in bytes "
                                           "(0: system default)"),
        "timeout": OptionSpec(int, default=300, help="seconds before a copy is abandoned"),
        "copy_checksum": OptionSpec(str, default="adler32",
                                    help="checksum verifying server-side copies "
                                         "(adler32, md5, sha1, sha256, sha512 or none)"),
        "escape_non_ascii": OptionSpec(bool, default=True,
                                       help="store non-ASCII name characters as %XX"),
    }
    capabilities = (Capability.SERVER_COPY | Capability.THIRD_PARTY_COPY
                    | Capability.CHECKSUM | Capability.ATOMIC_RENAME)

    def __init__(self, name: str, options: Any, context: AdaptorContext) -> None:
        super().__init__(name, options, context)
        url = str(options["url"])
        parsed = urllib.parse.urlsplit(url)
        scheme = parsed.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"site {name}: url must be gsiftp:// or ftp://")
        if not parsed.hostname:
            raise ValueError(f"site {name}: url has no host")
        self.scheme = scheme
        self.host = parsed.hostname
        self.port = parsed.port or _DEFAULT_PORTS[scheme]
        root = urllib.parse.unquote(parsed.path or "/")
        self.root = "/" + root.strip("/") if root.strip("/") else ""
        # credentials given in the URL are taken out of it
        self.user: str | None = options.get("user") or (
            urllib.parse.unquote(parsed.username) if parsed.username else None)
        self._password: str | None = options.get("password") or (
            urllib.parse.unquote(parsed.password) if parsed.password else None)
        self.x509_proxy: str | None = options.get("x509_proxy") or None
        if scheme == "gsiftp" and not self.x509_proxy:
            self.x509_proxy = os.environ.get("X509_USER_PROXY") or f"/tmp/x509up_u{os.getuid()}"
        cert_dir = options.get("x509_cert_dir")
        if cert_dir:
            current = os.environ.get("X509_CERT_DIR")
            if current and current != str(cert_dir):
                log.warning("site %s: X509_CERT_DIR already set to another folder; "
                            "keeping %s", name, current)
            else:
                os.environ["X509_CERT_DIR"] = str(cert_dir)
        self.parallel_streams = int(options.get("parallel_streams", 4) or 0)
        self.tcp_buffer_size = int(options.get("tcp_buffer_size", 0) or 0)
        self.timeout = int(options.get("timeout", 300) or 300)
        self.escape_non_ascii = bool(options.get("escape_non_ascii", True))
        algo = str(options.get("copy_checksum") or "adler32").lower()
        if algo != "none" and algo not in _CHECKSUMS:
            raise ValueError(f"site {name}: copy_checksum must be one of "
                             f"{', '.join(_CHECKSUMS)} or none")
        self.copy_checksum = "" if algo == "none" else algo
        self.prefix = f"{scheme}://{self.host}:{self.port}"
        self._pool: list[Any] = []
        #: contexts for server-to-server copies, by the source's login
        self._copy_pool: dict[tuple[str, str | None, str | None, str | None], list[Any]] = {}
        self._pool_lock = threading.Lock()
        self._running: set[Any] = set()  # contexts of copies in progress
        self._max_idle = max(1, int(options.get("max_connections", 8) or 8))
        self._listers: list[_Lister] = []  # idle listing helpers
        self._lister_slots = threading.BoundedSemaphore(MAX_LISTERS)
        self._closed = False
        self._proxy_cache: tuple[tuple[int, int], datetime | None] | None = None

    # -- description ---------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "type": self.type_name,
                "mount": self.root or "/"}

    # -- contexts, URLs, errors -------------------------------------------------
    def add_credentials(self, ctx: Any) -> None:
        """Register this site's credentials on a gfal2 context for its URL prefix."""
        if self.scheme == "gsiftp":
            ctx.cred_set(self.prefix, ctx.cred_new("X509_CERT", str(self.x509_proxy)))
            ctx.cred_set(self.prefix, ctx.cred_new("X509_KEY", str(self.x509_proxy)))
        elif self.user:
            ctx.cred_set(self.prefix, ctx.cred_new("USER", self.user))
            ctx.cred_set(self.prefix, ctx.cred_new("PASSWORD", self._password or ""))

    def _new_context(self) -> Any:
        if gfal2 is None:
            raise errors.Unavailable("the gfal2 Python binding (python3-gfal2) is not installed")
        with _CREATE_LOCK:  # plugin loading is not documented as thread-safe
            if not _ANCHOR:
                # never freed: the Globus modules stay active while the process
                # lives, however many adaptors come and go
                _ANCHOR.append(gfal2.creat_context())
            ctx = gfal2.creat_context()
        self.add_credentials(ctx)
        return ctx

    def _acquire(self, fresh: bool = False) -> Any:
        self._check_proxy()
        if not fresh:
            with self._pool_lock:
                if self._pool:
                    return self._pool.pop()
        with self._translate(""):
            return self._new_context()

    def _release(self, ctx: Any, broken: bool = False) -> None:
        """Give a context back to the pool (``broken``: it lost its connection
        or was left mid-transfer; free it instead)."""
        stale: builtins.list[Any] = [ctx]
        with self._pool_lock:
            if broken:
                # a lost connection mostly means the server dropped every idle
                # session (restart, idle timeout): the idle contexts go too
                stale += self._pool
                self._pool.clear()
            elif len(self._pool) < self._max_idle and not self._closed:
                self._pool.append(ctx)
                return
        _free_contexts(stale)

    @contextlib.contextmanager
    def _ctx(self, path: str, fresh: bool = False) -> Iterator[Any]:
        """A gfal2 context for this thread, with errors translated for ``path``
        (``fresh``: a new context, not one from the pool)."""
        ctx = self._acquire(fresh)
        broken = False
        try:
            with self._translate(path):
                yield ctx
        except errors.Transient:
            broken = True
            raise
        finally:
            self._release(ctx, broken)

    def _idempotent(self, path: str, op: Callable[[Any], Any]) -> Any:
        """``op(ctx)`` for an operation safe to repeat: after a lost connection
        it runs once more on a new context (new sessions)."""
        try:
            with self._ctx(path) as ctx:
                return op(ctx)
        except errors.Transient as exc:
            log.info("%s; retrying once on a new connection", exc.message)
        with self._ctx(path, fresh=True) as ctx:
            return op(ctx)

    def _check_proxy(self) -> None:
        """Unavailable (with the reason) when the GSI proxy is missing or expired."""
        if self.scheme != "gsiftp":
            return
        proxy = str(self.x509_proxy)
        try:
            st = os.stat(proxy)
        except OSError as exc:
            raise errors.Unavailable(
                f"site {self.name}: X.509 proxy {proxy} cannot be read "
                f"({exc.strerror}); create one with grid-proxy-init or voms-proxy-init") from exc
        key = (st.st_mtime_ns, st.st_size)
        if self._proxy_cache is None or self._proxy_cache[0] != key:
            self._proxy_cache = (key, _proxy_expiry(proxy))
        expiry = self._proxy_cache[1]
        if expiry is not None and expiry <= datetime.now(UTC):
            raise errors.Unavailable(
                f"site {self.name}: X.509 proxy {proxy} expired at "
                f"{expiry.isoformat(timespec='seconds')}; renew it (grid-proxy-init)")

    @contextlib.contextmanager
    def _translate(self, path: str) -> Iterator[None]:
        """The one place gfal2 errors become adaptor errors."""
        try:
            yield
        except errors.AdaptorError:
            raise
        except Exception as exc:
            if gfal2 is None or not isinstance(exc, gfal2.GError):
                raise
            raise self._error(exc, path) from None

    def _error(self, exc: Exception, path: str) -> errors.AdaptorError:
        message = str(exc)
        if self._password:
            message = message.replace(self._password, "***")
        code = int(getattr(exc, "code", 0) or 0)
        m = _SERVER_ERRNO.search(message)
        if m:
            code = int(m.group(1))
        # classify on the text without URLs and paths (a file may be named "proxy")
        lowered = _PATHISH.sub(" ", message).lower()
        if "is not a directory" in lowered:
            return errors.NotADirectory(f"not a directory: {path}", path)
        if _AUTH_RE.search(lowered) and code not in (errno.ENOENT, errno.EEXIST):
            return errors.Unavailable(
                f"site {self.name}: authentication failed ({_reason(message, 0)})", path)
        if "connection refused" in lowered or "could not connect" in lowered:
            return errors.Unavailable(f"site {self.name}: cannot connect to "
                                      f"{self.host}:{self.port}", path)
        if _CONN_LOST.search(lowered) and code not in (errno.ENOENT, errno.EEXIST):
            return errors.Transient(f"site {self.name}: connection lost "
                                    f"({_reason(message, 0)}): {path}", path)
        cls = errors.ERRNO_ERRORS.get(code, errors.AdaptorError)
        if cls is errors.Unavailable:
            return cls(f"site {self.name}: {_reason(message, code)}", path)
        return cls(f"{_reason(message, code)}: {path}" if path else _reason(message, code), path)

    def _process_error(self, rc: int, stderr: str, path: str) -> errors.AdaptorError:
        """An error for a failed globus-url-copy, without secrets or URLs."""
        text = stderr
        if self._password:
            text = text.replace(self._password, "***")
            text = text.replace(urllib.parse.quote(self._password, safe=""), "***")
        text = " ".join(_URL_RE.sub("<url>", text).split())[:300]
        if "No such file" in text or "not found" in text.lower():
            return errors.NotFound(f"no such file: {path}", path)
        if _AUTH_RE.search(_PATHISH.sub(" ", text)):
            return errors.Unavailable(f"site {self.name}: authentication failed ({text})", path)
        return errors.Transient(f"globus-url-copy failed (exit {rc}): {text}: {path}", path)

    def _server_name(self, name: str) -> str:
        if not self.escape_non_ascii or name.isascii():
            return name
        return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode())
                       for c in name)

    def _site_name(self, name: str) -> str:
        if not self.escape_non_ascii or "%" not in name:
            return name

        def decode(m: re.Match[str]) -> str:
            raw = bytes(int(h, 16) for h in m.group(0).split("%")[1:])
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return m.group(0)

        return _ESCAPED_RUN.sub(decode, name)

    def url(self, path: str) -> str:
        """The gfal2 URL of a site path (no credentials in it)."""
        parts = [self._server_name(p) for p in path.split("/") if p]
        full = self.root + "".join("/" + p for p in parts)
        return self.prefix + urllib.parse.quote(full or "/", safe="/")

    @staticmethod
    def _entry(name: str, mode: int, size: int, mtime: float) -> Entry:
        is_dir = (int(mode) & 0o170000) == 0o040000
        when = utc_from_timestamp(float(mtime)) if mtime else None
        return Entry(name, is_dir, 0 if is_dir else int(size), when, None)

    # -- required ------------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        url = self.url(path)
        st = self._idempotent(path, lambda ctx: ctx.stat(url))
        return self._entry(base_name(path), st.st_mode, st.st_size, st.st_mtime)

    def list(self, path: str) -> list[Entry]:
        return [e for e in self._list_raw_retrying(path)
                if not e.name.startswith(TEMP_PREFIX)]

    def _list_raw_retrying(self, path: str) -> builtins.list[Entry]:
        """globus-gridftp-server answers an MLSD with 550 when an entry vanishes
        between its readdir and its stat (a rename or delete by another
        client, or our own staged uploads being committed).  The folder is
        still there, so such a NotFound is retried; a folder that really is
        missing stays NotFound."""
        for attempt in range(LIST_RACE_RETRIES):
            try:
                return self._list_raw(path)
            except errors.NotFound:
                if attempt == LIST_RACE_RETRIES - 1 or not self.stat(path).is_dir:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _list_raw(self, path: str) -> builtins.list[Entry]:
        """One MLSD, run by a helper process (see the module docstring): a
        helper that dies, or a lost connection, is retried once on a new one."""
        self._check_proxy()
        url = self.url(path)
        with self._lister_slots:
            for attempt in range(2):
                lister = self._take_lister()
                try:
                    reply = lister.request(url)
                except _ListerDied as died:
                    lister.close()
                    if attempt:
                        raise errors.Transient(f"site {self.name}: listing failed, the gfal2 "
                                               f"helper process {died}: {path}", path) from None
                    log.warning("site %s: gfal2 listing helper %s; retrying the listing on a "
                                "new one", self.name, died)
                    continue
                if "ok" in reply:
                    self._give_lister(lister)
                    return [self._entry(self._site_name(name), mode, size, mtime)
                            for name, mode, size, mtime in reply["ok"]]
                code, message = reply["err"]
                err = self._error(_HelperError(int(code), str(message)), path)
                if reply.get("phase") == "read" or isinstance(err, errors.Transient):
                    lister.close()  # it exits after a failed read; a lost session goes too
                else:
                    self._give_lister(lister)
                if isinstance(err, errors.Transient) and not attempt:
                    log.info("%s; retrying once on a new connection", err.message)
                    continue
                raise err
        raise AssertionError("unreachable")

    def _take_lister(self) -> _Lister:
        with self._pool_lock:
            if self._listers:
                return self._listers.pop()
        setup = {"prefix": self.prefix, "scheme": self.scheme, "user": self.user,
                 "password": self._password, "proxy": self.x509_proxy}
        try:
            return _Lister(setup)
        except _ListerDied as died:
            raise errors.Unavailable(f"site {self.name}: cannot start the gfal2 listing "
                                     f"helper ({died})") from None

    def _give_lister(self, lister: _Lister) -> None:
        with self._pool_lock:
            if not self._closed:
                self._listers.append(lister)
                return
        lister.close()

    def open_read(self, path: str, offset: int = 0, length: int | None = None) -> Reader:
        entry = self.stat(path)
        if entry.is_dir:
            raise errors.IsADirectory(f"is a directory: {path}", path)
        left = max(0, entry.size - offset)
        if length is not None:
            left = min(left, max(0, length))
        if left == 0:
            return _EmptyReader()
        if offset >= PARTIAL_GET_MIN_OFFSET and _GUC:
            return self._partial_get(path, offset, left)
        for fresh in (False, True):  # opening a GET is safe to repeat
            ctx = self._acquire(fresh)
            try:
                with self._translate(path):
                    fh = ctx.open(self.url(path), "r")
                return _GridFTPReader(self, ctx, fh, path, offset, left)
            except errors.Transient as exc:
                self._release(ctx, broken=True)
                if fresh:
                    raise
                log.info("%s; retrying once on a new connection", exc.message)
            except BaseException:
                self._release(ctx)
                raise
        raise AssertionError("unreachable")

    def _partial_get(self, path: str, offset: int, left: int) -> Reader:
        """A GridFTP partial GET (ERET) of ``[offset, offset+left)`` by
        ``globus-url-copy``, streamed from its stdout (gfal2 cannot seek
        safely).  The URL, with the ftp password, goes in on stdin, never on
        the command line."""
        self._check_proxy()
        url = self._guc_url(path)
        env = self._guc_env()
        args = [str(_GUC), "-nodcau", "-partial-offset", str(offset),
                "-partial-length", str(left), "-f", "-"]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        assert proc.stdin is not None
        try:
            proc.stdin.write(f"{url} file:///dev/stdout\n".encode())
            proc.stdin.close()
        except OSError:
            pass
        return _ProcessReader(self, proc, path, left)

    def open_write(self, path: str, size_hint: int | None = None) -> Writer:
        self.check_writable(path)
        try:
            if self.stat(path).is_dir:
                raise errors.IsADirectory(f"is a directory: {path}", path)
        except errors.NotFound:
            pass
        return _GridFTPWriter(self, path)

    def _guc_url(self, path: str) -> str:
        """The URL globus-url-copy gets (on its stdin, never on its command
        line): with the ftp:// login in it."""
        url = self.url(path)
        if self.scheme == "ftp" and self.user:
            cred = urllib.parse.quote(self.user, safe="")
            if self._password is not None:
                cred += ":" + urllib.parse.quote(self._password, safe="")
            url = url.replace("ftp://", f"ftp://{cred}@", 1)
        return url

    def _guc_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.scheme == "gsiftp":
            env["X509_USER_PROXY"] = str(self.x509_proxy)
        return env

    def mkdir(self, path: str) -> None:
        self.check_writable(path)
        try:
            with self._ctx(path) as ctx:
                ctx.mkdir(self.url(path), 0o755)
        except errors.NotFound as exc:
            raise errors.ParentMissing(f"parent directory missing: {path}", path) from exc

    def remove(self, path: str, recursive: bool = False) -> None:
        self.check_writable(path)
        entry = self.stat(path)
        if not entry.is_dir:
            with self._ctx(path) as ctx:
                ctx.unlink(self.url(path))
            return
        if recursive:
            for child in self._list_raw(path):
                self.remove(join(path, child.name), recursive=True)
        with self._ctx(path) as ctx:
            ctx.rmdir(self.url(path))

    def rename(self, src: str, dst: str, overwrite: bool = False) -> None:
        self.check_writable(src)
        self.check_writable(dst)
        source = self.stat(src)
        try:
            target: Entry | None = self.stat(dst)
        except errors.NotFound:
            target = None
        if target is not None:
            if not overwrite:
                raise errors.Exists(f"already exists: {dst}", dst)
            if target.is_dir or source.is_dir:
                self.remove(dst, recursive=True)
        with self._ctx(src) as ctx:
            ctx.rename(self.url(src), self.url(dst))

    # -- optional -------------------------------------------------------------------
    def checksum(self, path: str, algorithm: str) -> str | None:
        algo = _CHECKSUMS.get(algorithm.lower())
        if algo is None:
            return None
        url = self.url(path)
        try:
            value = str(self._idempotent(path, lambda ctx: ctx.checksum(url, algo))).strip().lower()
        except errors.AdaptorError as exc:
            if "checksum algorithm" in exc.message.lower():
                return None
            raise
        if algo == "ADLER32":
            value = value.zfill(8)
        return value

    def copy(self, src: str, dst: str, overwrite: bool = False) -> None:
        """Server-side copy within the site (a GridFTP transfer the server does
        to itself; no data passes through this process)."""
        self._third_party(self, src, dst, overwrite)

    def copy_from(self, source: Adaptor, src: str, dst: str, overwrite: bool = False, *,
                  on_progress: Callable[[int], None] | None = None,
                  checksum: str | None = None,
                  cancel: threading.Event | None = None) -> str | None:
        """Third-party copy from another GridFTP site, server to server.

        Raises :class:`errors.Unsupported` when ``source`` is not a GridFTP site
        or the servers refuse the transfer; the caller then falls back to
        :func:`adaptors.base.stream_copy` (this method does not fall back).

        ``on_progress`` (an extension of the interface) is called with the
        bytes transferred so far at each performance marker gfal2 reports; if
        it raises, the transfer is cancelled, the partial copy removed and its
        exception re-raised.  Servers may send no markers (the Globus server
        in our tests sent none for a 2 GiB copy), so to cancel reliably call
        :meth:`cancel_copies` from another thread.
        """
        if not isinstance(source, GridFTPAdaptor):
            raise errors.Unsupported("third-party copy needs a GridFTP source", src)
        return self._third_party(source, src, dst, overwrite, on_progress, checksum, cancel)

    def cancel_copies(self) -> None:
        """Cancel every server-side copy this adaptor is running (any thread);
        each raises :class:`errors.AdaptorError` ("copy cancelled")."""
        with self._pool_lock:
            running = list(self._running)
        for ctx in running:
            with contextlib.suppress(Exception):
                ctx.cancel()

    def _third_party(self, source: GridFTPAdaptor, src: str, dst: str, overwrite: bool,
                     on_progress: Callable[[int], None] | None = None,
                     checksum: str | None = None,
                     cancel: threading.Event | None = None) -> str | None:
        """The copy, verified with ``checksum`` when both servers compute it
        (else with ``copy_checksum``); returns the verified digest of
        ``checksum``, or None when that algorithm was not the one verified."""
        self.check_writable(dst)
        entry = source.stat(src)
        if entry.is_dir:
            raise errors.IsADirectory(f"is a directory: {src}", src)
        try:
            target: Entry | None = self.stat(dst)
        except errors.NotFound:
            target = None
        if target is not None and (target.is_dir or not overwrite):
            raise (errors.IsADirectory if target.is_dir else errors.Exists)(
                f"already exists: {dst}", dst)
        tmp = join(parent_of(dst), f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        source._check_proxy()
        self._check_proxy()
        key = source._cred_key()
        with self._pool_lock:
            idle = self._copy_pool.get(key)
            ctx = idle.pop() if idle else None
        with self._translate(""):
            if ctx is None:
                ctx = self._new_context()
                if source.prefix != self.prefix:
                    # a source on the same server is read with this site's login
                    source.add_credentials(ctx)
            params = ctx.transfer_parameters()
            params.overwrite = True
            params.nbstreams = max(0, self.parallel_streams)
            if self.tcp_buffer_size:
                params.tcp_buffersize = self.tcp_buffer_size
            params.timeout = self.timeout
            params.create_parent = False
        failure: list[BaseException] = []
        if on_progress is not None:
            def monitor(_src: Any, _dst: Any, _avg: Any, _inst: Any, done: Any,
                        _elapsed: Any) -> None:
                try:
                    on_progress(int(done))
                except BaseException as exc:
                    failure.append(exc)
                    ctx.cancel()

            params.monitor_callback = monitor
        algo = self.copy_checksum
        if checksum and checksum.lower() in _CHECKSUMS:
            algo = checksum.lower()  # verify once, with what the caller wants
        verified: str | None = None
        pool = concurrent.futures.ThreadPoolExecutor(1)
        done = False
        try:
            # the source server checksums while the data flows (the same
            # result as gfal2's checksum_mode.both, without its serial wait)
            src_sum = pool.submit(source.checksum, src, algo) if algo else None
            try:
                with self._pool_lock:
                    self._running.add(ctx)
                finished = threading.Event()
                if cancel is not None:
                    threading.Thread(target=_cancel_when_set, args=(cancel, finished, ctx),
                                     name="gridftp-cancel", daemon=True).start()
                try:
                    ctx.filecopy(params, source.url(src), self.url(tmp))
                except Exception as exc:
                    if failure:
                        raise failure[0] from None
                    if gfal2 is None or not isinstance(exc, gfal2.GError):
                        raise
                    raise self._copy_error(exc, dst) from None
                finally:
                    finished.set()
                    with self._pool_lock:
                        self._running.discard(ctx)
                if failure:
                    raise failure[0]
                if cancel is not None and cancel.is_set():
                    raise errors.AdaptorError("copy cancelled", dst)
                if src_sum is not None:
                    expected = src_sum.result()
                    got = self.checksum(tmp, algo) if expected else None
                    if expected and got is not None and got != expected:
                        raise errors.ChecksumMismatch(
                            f"{algo} mismatch after copy ({got} != {expected}): {dst}", dst)
                    if expected and got == expected and checksum and algo == checksum.lower():
                        verified = got
                with self._ctx(dst) as c:
                    c.rename(self.url(tmp), self.url(dst))
            except BaseException:
                with contextlib.suppress(errors.AdaptorError), self._ctx(tmp) as c:
                    c.unlink(self.url(tmp))
                raise
            done = True
        finally:
            # a failed or cancelled copy does not wait for the source's checksum
            pool.shutdown(wait=done, cancel_futures=not done)
        with self._pool_lock:  # a context whose copy failed is dropped, not reused
            idle = self._copy_pool.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append(ctx)
        return verified

    def _cred_key(self) -> tuple[str, str | None, str | None, str | None]:
        """Identity of this site's login, for caching copy contexts."""
        return (self.prefix, self.user, self._password, self.x509_proxy)

    def _copy_error(self, exc: Exception, dst: str) -> errors.AdaptorError:
        if getattr(exc, "code", 0) == errno.ECANCELED or "cancel" in str(exc).lower():
            return errors.AdaptorError(f"copy cancelled: {dst}", dst)
        err = self._error(exc, dst)
        if isinstance(err, (errors.NotFound, errors.PermissionDenied, errors.Unavailable,
                            errors.InsufficientStorage, errors.Exists, errors.Transient,
                            errors.NotADirectory, errors.IsADirectory)):
            if isinstance(err, errors.NotFound):
                return errors.ParentMissing(f"parent directory missing: {dst}", dst)
            return err
        return errors.Unsupported(f"servers refused a third-party copy ({err.message})", dst)

    def probe(self) -> None:
        self._check_proxy()
        super().probe()

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            contexts = self._pool + [c for idle in self._copy_pool.values() for c in idle]
            self._pool.clear()
            self._copy_pool.clear()
            listers, self._listers = self._listers, []
        for lister in listers:
            lister.close()
        _free_contexts(contexts)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not getattr(self, "_closed", True):
                self.close()


def _free_contexts(contexts: builtins.list[Any]) -> None:
    """Drop references to gfal2 contexts under the creation lock, so a context
    that is freed here (plugin unload) never runs alongside a plugin load."""
    with _CREATE_LOCK:
        contexts.clear()


class _HelperError(Exception):
    """A gfal2 error reported by the listing helper (errno and message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _ListerDied(Exception):
    """The listing helper process went away (its exit status says how)."""


class _Lister:
    """One listing helper process (adaptors/_gridftp_lister.py), used by one
    thread at a time; the setup with any password goes in on its stdin."""

    def __init__(self, setup: dict[str, Any]) -> None:
        try:
            self._proc = subprocess.Popen(
                [sys.executable, _LISTER_SCRIPT], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            raise _ListerDied(f"could not start: {exc.strerror}") from None
        self._send(json.dumps(setup))

    def _send(self, line: str) -> None:
        stdin: Any = self._proc.stdin
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except (OSError, ValueError):
            raise _ListerDied(self._how()) from None

    def request(self, url: str) -> dict[str, Any]:
        self._send(json.dumps({"url": url}))
        stdout: Any = self._proc.stdout
        line = stdout.readline()
        try:
            reply: Any = json.loads(line) if line else None
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise _ListerDied(self._how())
        out: dict[str, Any] = reply
        return out

    def _how(self) -> str:
        try:
            rc = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if rc < 0:
            with contextlib.suppress(ValueError):
                return f"died of {signal.Signals(-rc).name}"
        return f"exited with status {rc}"

    def close(self) -> None:
        proc = self._proc
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _cancel_when_set(cancel: threading.Event, finished: threading.Event, ctx: Any) -> None:
    """Cancel ``ctx``'s running copy once ``cancel`` is set (polled; gfal2 offers
    no callback), unless the copy finished first."""
    while not finished.is_set():
        if cancel.wait(CANCEL_POLL_S):
            if not finished.is_set():
                with contextlib.suppress(Exception):
                    ctx.cancel()
            return


def _proxy_expiry(path: str) -> datetime | None:
    """notAfter of the first certificate in a proxy file (None if unreadable)."""
    try:
        from cryptography import x509

        with open(path, "rb") as fh:
            data = fh.read()
        start = data.find(b"-----BEGIN CERTIFICATE-----")
        end = data.find(b"-----END CERTIFICATE-----", start)
        if start < 0 or end < 0:
            return None
        cert = x509.load_pem_x509_certificate(data[start:end + 25])
        return cert.not_valid_after_utc
    except (OSError, ValueError):
        return None


class _GridFTPReader:
    """Bytes ``[offset, offset+left)`` of a file from one GET stream.

    An offset is reached by reading and discarding the bytes before it, on
    purpose: gfal2 serves a seek (and ``pread``, which it builds on seek) by
    aborting the running GET twice, and the second abort races the Globus
    callback thread -- the process died with SIGSEGV in our stress tests,
    with or without threads.  Discarding costs O(offset) transfer (about
    1 GiB/s on loopback); closing before the end aborts the GET once, which
    gfal2 handles correctly.  Like a raw file, ``read(n)`` may return fewer
    than ``n`` bytes (at most 1 MiB per call); only ``b""`` means the end."""

    def __init__(self, adaptor: GridFTPAdaptor, ctx: Any, fh: Any, path: str, offset: int,
                 left: int) -> None:
        self._adaptor = adaptor
        self._ctx: Any = ctx
        self._fh: Any = fh
        self._path = path
        self._skip = offset
        self._left = left

    def read(self, size: int = -1) -> bytes:
        if self._fh is None:
            raise ValueError("read from a closed reader")
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        if want == 0:
            return b""
        with self._adaptor._translate(self._path):
            while self._skip > 0:
                skipped = self._fh.read_bytes(min(self._skip, READ_CHUNK))
                if not skipped:
                    self._left = 0
                    return b""
                self._skip -= len(skipped)
            data = self._fh.read_bytes(min(want, READ_CHUNK))
        if not data:
            self._left = 0
            return b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with contextlib.suppress(Exception):
            del fh  # gfal2 closes (and aborts an unfinished GET) on release
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            self._adaptor._release(ctx)

    def __del__(self) -> None:
        if getattr(self, "_fh", None) is not None:
            self.close()


class _ProcessReader:
    """Reads the stdout of a ``globus-url-copy`` partial GET."""

    def __init__(self, adaptor: GridFTPAdaptor, proc: subprocess.Popen[bytes], path: str,
                 left: int) -> None:
        self._adaptor = adaptor
        self._proc: subprocess.Popen[bytes] | None = proc
        self._path = path
        self._left = left

    def read(self, size: int = -1) -> bytes:
        proc = self._proc
        if proc is None:
            raise ValueError("read from a closed reader")
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        stdout: Any = proc.stdout  # a BufferedReader (bufsize=-1)
        data = stdout.read1(min(want, READ_CHUNK)) if want else b""
        if not data:
            rc = proc.wait()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            self.close()
            raise self._adaptor._process_error(rc, err, self._path)
        self._left -= len(data)
        return data

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(Exception):
                    pipe.close()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.close()


class _EmptyReader:
    """Zero bytes (an empty file or a range past its end): nothing to open."""

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _GridFTPWriter(Writer):
    """A PUT stream to a hidden temporary file, renamed onto the target on commit.

    ``write()`` only queues the block: a pump thread hands the blocks to gfal2
    (each gfal2 write waits until Globus has sent it), so receiving the next
    block from the client overlaps sending this one to the server.  At most
    :data:`WRITE_QUEUE_BLOCKS` blocks wait; a failed send is raised by the
    next ``write()`` or by ``commit()``."""

    def __init__(self, adaptor: GridFTPAdaptor, path: str) -> None:
        self._adaptor = adaptor
        self._path = path
        self._tmp = join(parent_of(path), f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        self._done = False
        self.bytes_written = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(WRITE_QUEUE_BLOCKS)
        self._failure: BaseException | None = None
        self._stop = False
        self._pump: threading.Thread | None = None
        self._broken = False  # its session may be mid-abort: free, do not reuse
        self._ctx: Any = adaptor._acquire()
        try:
            with adaptor._translate(path):
                self._fh: Any = self._ctx.open(adaptor.url(self._tmp), "w")
        except errors.NotFound as exc:
            self._done = True
            adaptor._release(self._ctx)
            raise errors.ParentMissing(f"parent directory missing: {path}", path) from exc
        except BaseException:
            self._done = True
            adaptor._release(self._ctx)
            raise

    def write(self, data: bytes) -> int:
        if self._done:
            raise ValueError("write after commit/abort")
        if self._failure is not None:
            raise self._failure_error()
        total = len(data)
        if not total:
            return 0
        if self._pump is None:
            self._pump = threading.Thread(target=self._run_pump, daemon=True,
                                          name=f"gridftp-put-{self._adaptor.name}")
            self._pump.start()
        block = bytes(data)
        while True:
            try:
                self._queue.put(block, timeout=1)
                break
            except queue.Full:
                if self._failure is not None:
                    raise self._failure_error() from None
                assert self._pump is not None
                if not self._pump.is_alive():  # pragma: no cover - defensive
                    raise errors.Transient(f"upload stopped: {self._path}", self._path) from None
        self.bytes_written += total
        return total

    def _run_pump(self) -> None:
        """The one thread that writes to the gfal2 handle until the sentinel."""
        try:
            while True:
                block = self._queue.get()
                if block is None or self._stop:
                    return
                with self._adaptor._translate(self._path):
                    rest = block
                    while rest:
                        n = int(self._fh.write(rest))
                        if n <= 0:
                            raise errors.Transient(f"short write: {self._path}", self._path)
                        rest = rest[n:]
        except BaseException as exc:
            self._failure = exc
            self._drain()  # unblock a write() waiting on a full queue

    def _drain(self) -> None:
        """Drop the blocks still queued for the pump."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _finish_pump(self, abort: bool) -> None:
        """Stop the pump (after the queued blocks, or at once on abort) and wait
        for it: from then on only the calling thread uses the context."""
        pump, self._pump = self._pump, None
        if pump is None:
            return
        if abort:
            self._stop = True
            self._drain()
        while pump.is_alive():
            try:
                self._queue.put(None, timeout=1)
                break
            except queue.Full:
                continue
        pump.join()
        if self._failure is not None and not abort:
            raise self._failure_error()

    def _failure_error(self) -> BaseException:
        """The pump's error; a generic one becomes ParentMissing when the folder
        is gone (the server fails the STOR while gfal2 reports only that the
        transfer is no longer running: "GLOBUS_FTP_CLIENT_IDLE not allowed")."""
        exc = self._failure
        assert exc is not None
        if type(exc) in (errors.AdaptorError, errors.Transient):
            try:
                self._adaptor.stat(parent_of(self._path))
            except errors.NotFound:
                return errors.ParentMissing(f"parent directory missing: {self._path}",
                                            self._path)
            except errors.AdaptorError:
                pass
        return exc

    def _close_handle(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            del fh  # gfal2 finishes the PUT when the file object is released

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        a = self._adaptor
        try:
            self._finish_pump(abort=False)
            self._close_handle()
            with a._translate(self._path):
                st = self._ctx.stat(a.url(self._tmp))
                if int(st.st_size) != self.bytes_written:
                    raise errors.Transient(
                        f"upload incomplete ({int(st.st_size)} of {self.bytes_written} "
                        f"bytes): {self._path}", self._path)
                self._ctx.rename(a.url(self._tmp), a.url(self._path))
        except BaseException:
            self._broken = True
            self._discard()
            raise
        finally:
            self._release()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._discard()
        finally:
            self._release()

    def _discard(self) -> None:
        """Stop the upload and remove the temporary file -- on a new connection
        if the upload's own was lost."""
        with contextlib.suppress(Exception):
            self._finish_pump(abort=True)
        with contextlib.suppress(Exception):
            self._close_handle()
        self._broken = True
        self._release()
        url = self._adaptor.url(self._tmp)
        with contextlib.suppress(errors.AdaptorError):
            self._adaptor._idempotent(self._tmp, lambda ctx: ctx.unlink(url))

    def _release(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            self._adaptor._release(ctx, broken=self._broken)

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()

