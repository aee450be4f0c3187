"""``sftp`` (alias ``sshfs``) sites: a directory on an SSH server, over SFTP.

Shape:

* One private event-loop thread per adaptor owns every asyncssh connection;
  callers (cheroot worker threads, ``asyncio.to_thread`` of the staging
  service) hand coroutines to it and wait with a timeout.  Errors are
  translated into :mod:`adaptors.errors` in one place (:func:`_translate`).
* A bounded pool (``max_connections``) of SSH connections, one SFTP session
  each; an operation leases the least busy one and opens another only while
  all are busy.  A connection that dropped is noticed (``connection_lost``)
  and replaced on the next request; idempotent operations are retried once on
  a fresh connection.  Idle connections are closed after a while so that a
  revoked key takes effect.
* Reads and writes are pipelined: many requests of the server's maximum size
  (``limits@openssh.com``) in flight, across ``read()``/``write()`` calls.  A
  writer hands its chunks to the loop without waiting for it and blocks only on
  its in-flight budget (:data:`WRITE_BEHIND`); the SSH packets go out through
  the lean send path of :mod:`adaptors.sftp_wire` and, per loop pass, one
  ``sendmsg()``.  Memory per transfer: at most READ_AHEAD or WRITE_BEHIND
  (8 MiB) of data plus one 1 MiB hand-over buffer.
* A listing pipelines its READDIR requests (:data:`READDIR_AHEAD` in flight)
  and parses the SFTPv3 replies directly.
* Writes go to a hidden temporary name in the target directory and are renamed
  into place on commit (``posix-rename@openssh.com`` where offered), after an
  ``fsync@openssh.com`` unless the site says ``fsync: false``.  A temporary
  file that could not be removed (server away) is removed on the next
  connection.
* Same-site ``copy`` uses the ``copy-data`` extension when the server offers
  it (OpenSSH >= 9.0); only then does the instance declare SERVER_COPY.
* ``checksum`` asks the server: ``openssl dgst`` where present, else
  ``sha256sum`` (``md5sum``, ``sha1sum``, ``sha512sum``), over an SSH exec
  channel.  The command line is fixed; the path goes on stdin to ``xargs -0``
  and reaches the tool as an argument, never as shell input.  An account that
  may not run commands, or lacks the tools, is asked once; from then on the
  site answers None (copies are verified by reading back).
  ``server_checksums: false`` never asks.
* Authentication uses the gateway's own key (see :mod:`adaptors.keys`), or
  ``key_file``; a ``password`` is used once to install the gateway key.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import posixpath
import re
import stat as stat_mod
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, ClassVar, TypeVar

import asyncssh

from adaptors import errors, keys, sftp_wire
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
    parent_of,
    utc_from_timestamp,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# SFTP message and status numbers (draft-ietf-secsh-filexfer-02)
_FXP_WRITE, _FXP_READDIR, _FXP_STATUS, _FXP_NAME, _FX_EOF = 6, 12, 101, 104, 1


#: ciphers in order of preference (AES-GCM is by far the cheapest in Python)
_PREFERRED_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                      "chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr",
                      "aes256-ctr"]
#: SSH channel window and largest packet we accept (big packets: less Python per byte)
WINDOW = 8 * 1024 * 1024
MAX_PKTSIZE = 256 * 1024 - 1024
#: request size when the server does not announce limits
FALLBACK_BLOCK = 32 * 1024
#: bytes kept in flight per reader / writer
READ_AHEAD = 8 * 1024 * 1024
WRITE_BEHIND = 8 * 1024 * 1024
#: the writer hands data to the loop in pieces of at least this size, and the
#: reader asks the loop for at least this much at a time
WRITE_FLUSH = 1024 * 1024
READ_TAKE = 1024 * 1024
#: send the SSH packets of one loop iteration with one syscall (see _CoalescingTransport)
COALESCE_WRITES = True
#: buffers per sendmsg() (below IOV_MAX)
IOV_BATCH = 512
#: the lean send path of :mod:`adaptors.sftp_wire` (fewer copies, no per-packet MSG_IGNORE)
LEAN_SEND = True
#: rekey after this many bytes (None: asyncssh's default, 1 GiB); tests lower it
REKEY_BYTES: int | None = None
#: READDIR requests in flight while listing a directory (~100 names each)
READDIR_AHEAD = 8
#: how long one call may wait for the server before it fails (not hang)
IO_TIMEOUT = 120.0
CONNECT_TIMEOUT = 20.0
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT_MAX = 4
#: unused connections are closed after this many seconds (re-authenticating)
IDLE_CLOSE = 60.0
MAX_CONN_AGE = 900.0


def _cipher_list() -> list[str]:
    try:
        from asyncssh.encryption import get_encryption_algs
        known = {a.decode() for a in get_encryption_algs()}
    except Exception:  # pragma: no cover - older asyncssh
        return _PREFERRED_CIPHERS
    return [c for c in _PREFERRED_CIPHERS if c in known] or _PREFERRED_CIPHERS


_CIPHERS = _cipher_list()

# -- error translation (the one place) --------------------------------------------

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncssh.DisconnectError, asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection,
    asyncssh.ChannelOpenError, ConnectionError, BrokenPipeError, EOFError,
)

# -- server-side digests -------------------------------------------------------------
#: the coreutils tool per checksum algorithm (``openssl dgst -ALG`` is tried first)
_DIGEST_COMMANDS = {"sha256": "sha256sum", "sha1": "sha1sum", "md5": "md5sum",
                    "sha512": "sha512sum"}
#: ``<hex>  <name>`` or ``<hex> *<name>``; coreutils starts the line with a
#: backslash for a name with a backslash or newline
_DIGEST_LINE = re.compile(rb"\\?([0-9a-fA-F]{32,128}) [ *]")

_SFTP_MAP: dict[type[asyncssh.SFTPError], type[errors.AdaptorError]] = {
    asyncssh.SFTPNoSuchFile: errors.NotFound,
    asyncssh.SFTPNoSuchPath: errors.NotFound,
    asyncssh.SFTPPermissionDenied: errors.PermissionDenied,
    asyncssh.SFTPWriteProtect: errors.PermissionDenied,
    asyncssh.SFTPFileAlreadyExists: errors.Exists,
    asyncssh.SFTPDirNotEmpty: errors.NotEmpty,
    asyncssh.SFTPNotADirectory: errors.NotADirectory,
    asyncssh.SFTPFileIsADirectory: errors.IsADirectory,
    asyncssh.SFTPNoSpaceOnFilesystem: errors.InsufficientStorage,
    asyncssh.SFTPQuotaExceeded: errors.InsufficientStorage,
    asyncssh.SFTPOpUnsupported: errors.Unsupported,
}


class _AuthRejected(Exception):
    """Key login refused (internal; becomes errors.Unavailable)."""


def _translate(exc: BaseException, path: str, site: str) -> errors.AdaptorError:
    """Back-end exception -> adaptor error.  Messages never carry secrets."""
    if isinstance(exc, errors.AdaptorError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return errors.Unavailable(
            f"site {site}: host key verification failed: the server's host key does not "
            "match the pinned host_key/known_hosts; refusing to connect", path)
    if isinstance(exc, asyncssh.PermissionDenied | _AuthRejected):
        return errors.Unavailable(f"site {site}: authentication failed: {exc}", path)
    if isinstance(exc, asyncssh.SFTPError):
        for cls, target in _SFTP_MAP.items():
            if isinstance(exc, cls):
                return target(f"{exc.reason or target.__doc__}: {path}", path)
        if isinstance(exc, _CONNECTION_ERRORS):
            return errors.Transient(f"site {site}: connection lost: {exc.reason}", path)
        return errors.AdaptorError(f"{exc.reason or 'SFTP failure'}: {path}", path)
    if isinstance(exc, _CONNECTION_ERRORS):
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        return errors.Transient(f"site {site}: connection lost: {reason}", path)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | concurrent.futures.TimeoutError):
        return errors.Transient(f"site {site}: no answer from the server in time", path)
    if isinstance(exc, OSError):
        return errors.Transient(
            f"site {site}: {exc.strerror or exc.__class__.__name__}", path)
    return errors.AdaptorError(f"site {site}: {exc.__class__.__name__}", path)


def _connect_error(exc: BaseException, host: str, port: int, site: str) -> errors.AdaptorError:
    """Failures while connecting describe the site: Unavailable."""
    if isinstance(exc, errors.AdaptorError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable | asyncssh.PermissionDenied | _AuthRejected):
        return _translate(exc, "", site)
    if isinstance(exc, OSError):
        reason = exc.strerror or exc.__class__.__name__
    elif isinstance(exc, asyncssh.Error):
        reason = exc.reason
    else:
        reason = exc.__class__.__name__
    return errors.Unavailable(f"site {site}: cannot connect to {host}:{port}: {reason}")


# -- entries ----------------------------------------------------------------------

def _is_dir(attrs: asyncssh.SFTPAttrs) -> bool:
    return attrs.permissions is not None and stat_mod.S_ISDIR(attrs.permissions)


def _fname(name: asyncssh.SFTPName) -> str:
    fn = name.filename
    return fn if isinstance(fn, str) else fn.decode("utf-8", "surrogateescape")


def _is_link(attrs: asyncssh.SFTPAttrs) -> bool:
    return attrs.permissions is not None and stat_mod.S_ISLNK(attrs.permissions)


def _entry(name: str, attrs: asyncssh.SFTPAttrs) -> Entry:
    return _entry_from(name, attrs.permissions, attrs.size, attrs.mtime, attrs.mtime_ns)


def _entry_from(name: str, perms: int | None, size: int | None, mtime: int | float | None,
                mtime_ns: int | None) -> Entry:
    is_dir = perms is not None and stat_mod.S_ISDIR(perms)
    nbytes = 0 if is_dir else int(size or 0)
    when: float | None = None
    if mtime_ns is not None:
        when = mtime_ns / 1e9
    elif mtime is not None:
        when = float(mtime)
    ns = mtime_ns if mtime_ns is not None else int(mtime or 0) * 10**9
    etag = None if is_dir else f"{nbytes:x}-{ns:x}"
    return Entry(name, is_dir, nbytes, utc_from_timestamp(when), etag)


async def _scandir(sftp: asyncssh.SFTPClient, remote: str) -> list[sftp_wire.NameTuple]:
    """All entries of directory ``remote``: READDIR requests pipelined
    (:data:`READDIR_AHEAD` in flight, not one round trip per 100 names) and
    SFTPv3 replies parsed directly; asyncssh's ``readdir`` otherwise."""
    handler: Any = getattr(sftp, "_handler", None)
    send = getattr(handler, "_send_request", None)
    status = getattr(handler, "_packet_handlers", {}).get(_FXP_STATUS)
    if handler is None or send is None or status is None or sftp.version != 3:
        return [(n.filename if isinstance(n.filename, bytes) else n.filename.encode(
            "utf-8", "surrogateescape"), n.attrs.permissions, n.attrs.size, n.attrs.mtime)
            for n in await sftp.readdir(remote)]
    handle: bytes = await handler.opendir(sftp.compose_path(remote))
    loop = asyncio.get_running_loop()
    request = (len(handle).to_bytes(4, "big") + handle,)
    pending: collections.deque[asyncio.Future[tuple[int, Any]]] = collections.deque()

    def issue() -> None:
        waiter: asyncio.Future[tuple[int, Any]] = loop.create_future()
        waiter.add_done_callback(_consume)
        send(_FXP_READDIR, request, waiter)
        pending.append(waiter)

    out: list[sftp_wire.NameTuple] = []
    at_end = False
    try:
        for _ in range(READDIR_AHEAD):
            issue()
        while pending:
            resptype, packet = await pending.popleft()
            if resptype == _FXP_NAME:
                try:
                    out.extend(sftp_wire.parse_names_v3(packet.get_remaining_payload()))
                except ValueError as exc:
                    raise asyncssh.SFTPBadMessage(str(exc)) from None
                if not at_end:
                    issue()
            elif resptype == _FXP_STATUS:
                if int.from_bytes(packet.get_remaining_payload()[:4], "big") == _FX_EOF:
                    at_end = True
                else:
                    status(handler, packet)  # raises the matching SFTPError
                    raise asyncssh.SFTPBadMessage("unexpected FX_OK to READDIR")
            else:
                raise asyncssh.SFTPBadMessage(f"unexpected response type {resptype}")
    finally:
        # the handle is closed without waiting (requests are answered in order)
        loop.create_task(handler.close(handle)).add_done_callback(_consume)
    return out


def _consume(fut: asyncio.Future[Any]) -> None:
    """Done callback: retrieve a fire-and-forget future's exception."""
    if not fut.cancelled():
        fut.exception()


# -- the event loop thread and the connection pool -----------------------------------

class _LoopThread:
    """An asyncio loop running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=f"sftp-{name}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def in_loop(self) -> bool:
        return threading.current_thread() is self.thread

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


def _stop_soon(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(RuntimeError):  # already closed
        loop.call_soon_threadsafe(loop.stop)


class _Session:
    """One SSH connection with its SFTP client."""

    def __init__(self) -> None:
        self.conn: asyncssh.SSHClientConnection | None = None
        self.sftp: asyncssh.SFTPClient | None = None
        self.users = 0
        self.dead = False
        self.created = time.monotonic()
        self.last_used = self.created
        self.read_len = FALLBACK_BLOCK
        self.write_len = FALLBACK_BLOCK
        self.posix_rename = False
        self.fsync = False
        self.copy_data = False

    def setup(self, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient) -> None:
        self.conn, self.sftp = conn, sftp
        handler = getattr(sftp, "_handler", None)
        limits = sftp.limits
        if getattr(handler, "_supports_limits", False):
            self.read_len = max(FALLBACK_BLOCK, min(int(limits.max_read_len), 4 << 20))
            self.write_len = max(FALLBACK_BLOCK, min(int(limits.max_write_len), 4 << 20))
        self.posix_rename = bool(getattr(handler, "_supports_posix_rename", False))
        self.fsync = bool(getattr(handler, "_supports_fsync", False))
        self.copy_data = bool(sftp.supports_remote_copy)

    def close(self) -> None:
        self.dead = True
        if self.conn is not None:
            self.conn.close()


class _CoalescingTransport:
    """Wraps the connection's asyncio transport so that the SSH packets queued
    in one loop iteration leave in one ``sendmsg()`` (asyncssh writes every
    32 KiB packet separately; one syscall each costs ~10% of the CPU of an
    upload), gathered from the pieces without joining them first."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False
        sock = getattr(transport, "_sock", None)  # the raw socket (asyncio internals)
        self._sock = sock if callable(getattr(sock, "sendmsg", None)) else None

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        transport = self._transport
        if transport.is_closing():
            return
        start = 0
        if self._sock is not None and len(pending) > 1 \
                and transport.get_write_buffer_size() == 0:
            start = self._gather_send(pending)
            if start == len(pending):
                return
        rest = pending[start:]
        transport.write(rest[0] if len(rest) == 1 else b"".join(rest))

    def _gather_send(self, pending: list[Any]) -> int:
        """Send what the socket takes now; the unsent tail is turned into
        whole pieces again.  Returns the index of the first unsent piece."""
        assert self._sock is not None
        i = 0
        while i < len(pending):
            batch = pending[i:i + IOV_BATCH]
            try:
                sent = self._sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                return i
            except OSError:
                return i  # the transport's own write reports the error
            for piece in batch:
                if sent >= len(piece):
                    sent -= len(piece)
                    i += 1
                    continue
                if sent:  # partly sent: keep the rest of this piece
                    pending[i] = memoryview(piece)[sent:]
                return i
        return i

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Client(asyncssh.SSHClient):
    def __init__(self, session: _Session) -> None:
        self.session = session

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.dead = True


# -- readers and writers -------------------------------------------------------------

def _raw_handler(fh: asyncssh.SFTPClientFile) -> Any:
    """asyncssh's request layer for ``fh`` (one SFTP request per call, no helper
    tasks), or None when this asyncssh version hides it."""
    handler = getattr(fh, "_handler", None)
    if handler is not None and callable(getattr(handler, "read", None)) \
            and callable(getattr(handler, "write", None)):
        return handler
    return None


async def _read_block(fh: asyncssh.SFTPClientFile, offset: int, size: int) -> bytes:
    """Exactly ``size`` bytes at ``offset`` (fewer only at end of file)."""
    handler = _raw_handler(fh)
    if handler is None:
        data = await fh.read(size, offset)
        return data if isinstance(data, bytes) else data.encode()
    parts: list[bytes] = []
    while size > 0:
        try:
            data, _at_end = await handler.read(fh.handle, offset, size)
        except asyncssh.SFTPEOFError:
            break
        if not data:
            break
        parts.append(data)
        offset += len(data)
        size -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _write_block(fh: asyncssh.SFTPClientFile, offset: int,
                       data: bytes | memoryview) -> int:
    handler = _raw_handler(fh)
    if handler is None:
        return int(await fh.write(bytes(data), offset))
    make_request = getattr(handler, "_make_request", None)
    if make_request is None:
        await handler.write(fh.handle, offset, bytes(data))
    else:  # FXP_WRITE with the data as its own piece (no String() copy)
        handle = fh.handle
        await make_request(_FXP_WRITE, len(handle).to_bytes(4, "big") + handle
                           + offset.to_bytes(8, "big") + len(data).to_bytes(4, "big"), data)
    return len(data)


class _ReadPipe:
    """Loop side of a reader: keeps ``depth`` block reads in flight, in order."""

    def __init__(self, fh: asyncssh.SFTPClientFile, start: int, end: int, block: int) -> None:
        self.fh = fh
        self.next_off = start
        self.end = end
        self.block = block
        self.depth = max(8, min(128, READ_AHEAD // block))
        self.pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.left = b""
        self.eof = start >= end

    def _top_up(self) -> None:
        while self.next_off < self.end and len(self.pending) < self.depth:
            size = min(self.block, self.end - self.next_off)
            self.pending.append(asyncio.ensure_future(_read_block(self.fh, self.next_off, size)))
            self.next_off += size

    async def take(self, n: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        if self.left:
            piece, self.left = self.left[:n], self.left[n:]
            parts.append(piece)
            got += len(piece)
        while got < n and not self.eof:
            self._top_up()
            if not self.pending:
                self.eof = True
                break
            data = await self.pending.popleft()
            if not data:  # file shrank under us
                self.eof = True
                break
            need = n - got
            if len(data) > need:
                parts.append(data[:need])
                self.left = data[need:]
                got = n
            else:
                parts.append(data)
                got += len(data)
        self._top_up()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def close(self) -> None:
        for fut in self.pending:
            fut.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        self.pending.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.fh.close(), 10)


class _SFTPReader:
    """Thread side of a reader (``read``/``close``).  Small reads are served
    from a local buffer; the loop is asked for at least :data:`READ_TAKE`
    bytes at a time (one loop hop per MiB, not per call)."""

    def __init__(self, adaptor: SFTPAdaptor, path: str, session: _Session,
                 pipe: _ReadPipe, remaining: int) -> None:
        self._a = adaptor
        self._path = path
        self._session = session
        self._pipe: _ReadPipe | None = pipe
        self._remaining = remaining  # bytes not yet handed to the caller
        self._buf = b""
        self._pos = 0
        self._broken: errors.AdaptorError | None = None

    def read(self, size: int = -1) -> bytes:
        pipe = self._pipe
        if pipe is None:
            raise ValueError("read from a closed reader")
        if self._broken is not None:
            raise self._broken
        if self._remaining <= 0:
            return b""
        n = self._remaining if size is None or size < 0 else min(size, self._remaining)
        if n == 0:
            return b""
        avail = len(self._buf) - self._pos
        if avail == 0:
            want = min(self._remaining, max(n, READ_TAKE))
            try:
                self._buf = self._a._run(pipe.take(want), self._path)
            except errors.AdaptorError as exc:
                self._broken = exc
                raise
            self._pos = 0
            avail = len(self._buf)
            if avail == 0:
                self._remaining = 0
                return b""
        if self._pos == 0 and n >= avail:
            data, self._buf = self._buf, b""
        elif n >= avail:
            data, self._buf, self._pos = self._buf[self._pos:], b"", 0
        else:
            data = self._buf[self._pos:self._pos + n]
            self._pos += n
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        self._buf = b""
        if pipe is None:
            return
        self._a._run_quietly(self._a._close_pipe(pipe, self._session))

    def __del__(self) -> None:
        if getattr(self, "_pipe", None) is not None:
            self.close()


class _WritePipe:
    """Block writes in flight, bounded by bytes.

    The writing thread hands chunks over with :meth:`offer` (no round trip to
    the loop: it blocks only while :data:`WRITE_BEHIND` bytes are queued or in
    flight); the loop issues one request per block in order (:meth:`feed`) and
    gives the budget back as the server acknowledges them."""

    def __init__(self, fh: asyncssh.SFTPClientFile, block: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.fh = fh
        self.block = block
        self.loop = loop
        self.offset = 0
        self.tasks: collections.deque[asyncio.Future[int]] = collections.deque()
        self.error: BaseException | None = None
        self.cancelled = False
        self._cond = threading.Condition(threading.Lock())
        self._budget = WRITE_BEHIND  # bytes the thread may still hand over
        self._waiting = False
        self._need = 0  # budget the waiting thread needs (wake it only then)

    # -- thread side ---------------------------------------------------------------
    def offer(self, data: bytes, timeout: float) -> None:
        """Queue ``data`` (immutable) for writing; raises the first failure."""
        n = len(data)
        with self._cond:
            deadline = time.monotonic() + timeout
            need = min(n, WRITE_BEHIND)
            while self.error is None and self._budget < need:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("write not acknowledged in time")
                self._waiting, self._need = True, need
                self._cond.wait(min(left, 1.0))
                self._waiting = False
            if self.error is not None:
                raise self.error
            self._budget -= n
        self.loop.call_soon_threadsafe(self.feed, data)

    # -- loop side -----------------------------------------------------------------
    def _done(self, fut: asyncio.Future[int], size: int) -> None:
        exc = None if fut.cancelled() else fut.exception()
        self._give_back(size, exc)

    def _give_back(self, n: int, exc: BaseException | None = None) -> None:
        """Return ``n`` bytes of budget (and record the first failure); wake the
        waiting thread only once it can go on."""
        with self._cond:
            self._budget += n
            if exc is not None and self.error is None:
                self.error = exc
            if self._waiting and (self._budget >= self._need or self.error is not None):
                self._cond.notify()

    def feed(self, data: bytes) -> None:
        if self.cancelled or self.error is not None:
            self._give_back(len(data))
            return
        view = memoryview(data)  # slices share ``data`` (immutable): no copies
        block = self.block
        for i in range(0, len(data), block):
            piece = view if len(data) <= block else view[i:i + block]
            fut = asyncio.ensure_future(_write_block(self.fh, self.offset, piece))
            size = len(piece)
            fut.add_done_callback(functools.partial(self._done, size=size))
            self.tasks.append(fut)
            self.offset += size
        while self.tasks and self.tasks[0].done():
            self.tasks.popleft()

    async def push(self, data: bytes) -> None:
        """Loop-side hand-over (commit's tail)."""
        with self._cond:
            self._budget -= len(data)
        self.feed(data)

    async def drain(self) -> None:
        """Wait for every write handed over so far; raises the first failure."""
        await asyncio.sleep(0)  # let queued feed() callbacks run first
        while self.tasks:
            fut = self.tasks.popleft()
            with contextlib.suppress(Exception):
                await fut
        if self.error is not None:
            raise self.error

    async def cancel(self) -> None:
        self.cancelled = True
        await asyncio.sleep(0)
        for fut in self.tasks:
            fut.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


class _SFTPWriter(Writer):
    """Staged write to ``<dir>/.fedgate-tmp-<uuid>``; renamed on commit."""

    def __init__(self, adaptor: SFTPAdaptor, path: str, final: str, tmp: str,
                 session: _Session, pipe: _WritePipe) -> None:
        self._a = adaptor
        self._path = path
        self._final = final
        self._tmp = tmp
        self._session = session
        self._pipe = pipe
        self._buf = bytearray()
        self._done = False
        self._lock = threading.Lock()
        self.bytes_written = 0

    def write(self, data: bytes) -> int:
        with self._lock:
            if self._done:
                raise ValueError("write after commit/abort")
            n = len(data)
            if not self._buf and n >= WRITE_FLUSH:
                # bytes are immutable: no copy needed; anything else is copied once
                self._offer(data if isinstance(data, bytes) else bytes(data))
            else:
                self._buf += data
                if len(self._buf) >= WRITE_FLUSH:
                    chunk, self._buf = bytes(self._buf), bytearray()
                    self._offer(chunk)
            self.bytes_written += n
            return n

    def _offer(self, chunk: bytes) -> None:
        try:
            self._pipe.offer(chunk, IO_TIMEOUT)
        except Exception as exc:
            raise _translate(exc, self._path, self._a.name) from exc

    def commit(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            chunk, self._buf = bytes(self._buf), bytearray()
        try:
            self._a._run(self._a._commit(self._pipe, self._session, chunk, self._tmp,
                                         self._final), self._path)
        except BaseException:
            self._a._run_quietly(self._a._discard(self._pipe, self._session, self._tmp))
            raise

    def abort(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            self._buf = bytearray()
        self._a._run_quietly(self._a._discard(self._pipe, self._session, self._tmp))

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()


# -- the adaptor -----------------------------------------------------------------------

class SFTPAdaptor(Adaptor):
    """A directory on an SSH server, reached over SFTP with the gateway's key."""

    type_name = "sftp"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "host": OptionSpec(str, required=True, help="SSH server host name or address"),
        "port": OptionSpec(int, default=22),
        "user": OptionSpec(str, required=True, help="remote account"),
        "path": OptionSpec(str, default=".", help="site root (relative: under the home)"),
        "host_key": OptionSpec(str, help='pinned server key, "ssh-ed25519 AAAA..."'),
        "known_hosts": OptionSpec(str, help="OpenSSH known_hosts file with the server key"),
        "insecure_skip_host_key": OptionSpec(bool, default=False,
                                             help="do not verify the server (unsafe)"),
        "password": OptionSpec(str, secret=True,
                               help="used once to install the gateway key, then forgotten"),
        "key_file": OptionSpec(str, help="private key to use instead of the gateway key"),
        "fsync": OptionSpec(bool, default=True,
                            help="flush uploads to the server's disk before they are renamed "
                                 "into place (fsync@openssh.com); false is faster, like scp"),
        "server_checksums": OptionSpec(bool, default=True,
                                       help="checksums computed on the server (openssl dgst "
                                       "or sha256sum... run over SSH) when the account may "
                                       "run commands; else copies are verified by reading "
                                       "back"),
    }
    capabilities = Capability.ATOMIC_RENAME | Capability.CHECKSUM

    def __init__(self, name: str, options: Mapping[str, Any], context: AdaptorContext) -> None:
        opts = dict(options)
        password = opts.pop("password", None)
        super().__init__(name, opts, context)
        self._password: keys.Secret | None = keys.Secret(str(password)) if password else None
        self.host = str(opts["host"])
        self.port = int(opts.get("port") or 22)
        self.user = str(opts["user"])
        root = posixpath.normpath(str(opts.get("path") or "."))
        self.root = "." if root in ("", ".") else root
        self.key_file: str | None = opts.get("key_file") or None
        self.max_connections = max(1, int(opts.get("max_connections") or 8))
        self.fsync = bool(opts.get("fsync", True))
        #: False once the server showed it cannot run the digest commands
        self.server_checksums = bool(opts.get("server_checksums", True))
        self.pin = keys.HostKeyPin(self.host, self.port, opts.get("host_key") or None,
                                   opts.get("known_hosts") or None,
                                   bool(opts.get("insecure_skip_host_key", False)))
        self._records = keys.KeyRecords(context)
        self._record_key = f"{self.user}@{self.host}:{self.port}"
        self._client_key: asyncssh.SSHKey | None = None
        self._lock = threading.Lock()
        self._loop: _LoopThread | None = None
        self._sessions: list[_Session] = []
        self._pool_lock: asyncio.Lock | None = None
        self._deploy_lock: asyncio.Lock | None = None
        self._connecting = 0
        self._orphans: set[str] = set()  # temp files to remove on the next connection

    def describe(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "type": self.type_name,
                "mount": self.root}

    # -- plumbing: thread -> loop ---------------------------------------------------
    def _loop_thread(self) -> _LoopThread:
        with self._lock:
            if self._loop is None or self._loop.loop.is_closed():
                self._loop = _LoopThread(self.name)
                # an adaptor dropped without close() must not leave its thread behind
                weakref.finalize(self, _stop_soon, self._loop.loop)
                self._sessions = []
                self._pool_lock = asyncio.Lock()
                self._deploy_lock = asyncio.Lock()
            return self._loop

    def _run(self, coro: Coroutine[Any, Any, T], path: str = "",
             timeout: float | None = IO_TIMEOUT) -> T:
        lt = self._loop_thread()
        if lt.in_loop():
            coro.close()
            raise RuntimeError("blocking SFTP call from the adaptor's own loop")
        fut = lt.submit(coro)
        try:
            return fut.result(timeout)
        except Exception as exc:
            fut.cancel()
            raise _translate(exc, path, self.name) from exc
        except BaseException:
            fut.cancel()
            raise

    def _run_quietly(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Best-effort clean-up (never raises; never blocks the loop thread)."""
        lt = self._loop
        if lt is None or lt.loop.is_closed():
            coro.close()
            return
        if lt.in_loop():
            lt.loop.create_task(coro)
            return
        try:
            lt.submit(coro).result(30)
        except Exception as exc:
            log.debug("site %s: clean-up failed: %s", self.name, exc.__class__.__name__)

    def _remote(self, path: str) -> str:
        rel = path.strip("/")
        if rel and (".." in rel.split("/") or "\x00" in rel or "\\" in rel):
            raise errors.PermissionDenied("path escapes the site", path)
        if not rel:
            return self.root
        return f"{self.root.rstrip('/')}/{rel}" if self.root != "/" else f"/{rel}"

    # -- connections -------------------------------------------------------------------
    def _key(self) -> asyncssh.SSHKey:
        if self._client_key is None:
            self._client_key = (keys.load_key_file(self.key_file) if self.key_file
                                else keys.gateway_key(self.context))
        return self._client_key

    async def _connect(self, key: asyncssh.SSHKey) -> _Session:
        session = _Session()
        conn = await asyncssh.connect(
            self.host, self.port, username=self.user, client_keys=[key],
            known_hosts=self.pin.asyncssh_known_hosts(),
            server_host_key_algs=self.pin.server_host_key_algs(),
            preferred_auth=["publickey"], agent_path=None, password=None,
            passphrase=None, config=[], ignore_encrypted=True, gss_auth=False,
            gss_kex=False, kbdint_auth=False,
            encryption_algs=_CIPHERS, compression_algs=None,
            window=WINDOW, max_pktsize=MAX_PKTSIZE,
            connect_timeout=CONNECT_TIMEOUT, login_timeout=CONNECT_TIMEOUT,
            **({"rekey_bytes": REKEY_BYTES} if REKEY_BYTES else {}),
            keepalive_interval=KEEPALIVE_INTERVAL, keepalive_count_max=KEEPALIVE_COUNT_MAX,
            client_factory=lambda: _Client(session))
        transport = getattr(conn, "_transport", None)
        coalesced = False
        if COALESCE_WRITES and transport is not None and callable(getattr(transport, "write",
                                                                          None)):
            conn._transport = _CoalescingTransport(  # type: ignore[assignment]
                transport, asyncio.get_running_loop())
            coalesced = True
        try:
            sftp = await asyncio.wait_for(conn.start_sftp_client(), CONNECT_TIMEOUT)
        except BaseException:
            conn.close()
            raise
        if LEAN_SEND and not sftp_wire.install(conn, sftp, coalesced):
            log.debug("site %s: asyncssh's own send path (lean path not applicable)", self.name)
        session.setup(conn, sftp)
        if session.copy_data:
            self.capabilities = self.capabilities | Capability.SERVER_COPY  # type: ignore[misc]
        return session

    async def _open_session(self) -> _Session:
        """A new authenticated session; installs the gateway key with the
        password when the key is refused and a password was given."""
        err = self.pin.config_error()
        if err:
            raise errors.Unavailable(f"site {self.name}: {err}")
        try:
            key = await asyncio.to_thread(self._key)  # file I/O off the loop
            try:
                session = await self._connect(key)
            except asyncssh.PermissionDenied:
                session = await self._deploy_and_connect(key)
        except Exception as exc:
            raise _connect_error(exc, self.host, self.port, self.name) from exc
        self._password = None  # authenticated with the key: the password is not needed
        if self._orphans:
            await self._clean_orphans(session)
        return session

    async def _deploy_and_connect(self, key: asyncssh.SSHKey) -> _Session:
        assert self._deploy_lock is not None
        async with self._deploy_lock:
            with contextlib.suppress(asyncssh.PermissionDenied):
                return await self._connect(key)  # another task installed it meanwhile
            record = await asyncio.to_thread(self._records.get, self._record_key)
            fp = keys.fingerprint(key)
            previously = (record is not None and record.get("fingerprint") == fp
                          and record.get("state") in ("deployed", "refused"))
            if self._password is None or previously or self.key_file:
                if previously and record is not None:
                    if record.get("state") != "refused":
                        record = {**record, "state": "refused", "refused_at": keys.now_iso()}
                        await asyncio.to_thread(self._records.put, self._record_key, record)
                    raise _AuthRejected(
                        f"the gateway key installed for {self._record_key} on "
                        f"{record.get('deployed_at')} is no longer accepted (revoked?); "
                        "it is not re-installed automatically")
                raise _AuthRejected(
                    f"the {'key_file key' if self.key_file else 'gateway key'} is not "
                    f"accepted by {self._record_key}")
            password, line = self._password, keys.public_line(key, f"fedgate@{self.name}")
            appended = await asyncio.to_thread(keys.deploy_public_key, self.pin, self.user,
                                               password.reveal(), line, CONNECT_TIMEOUT)
            del password
            self._password = None
            log.info("site %s: gateway key %s %s %s", self.name, fp,
                     "installed for" if appended else "already present for", self._record_key)
            try:
                session = await self._connect(key)
            except asyncssh.PermissionDenied as exc:
                raise _AuthRejected(
                    "the gateway key was installed but key login is still refused "
                    "(check the permissions of ~/.ssh and authorized_keys)") from exc
            await asyncio.to_thread(self._records.put, self._record_key, {
                "site": self.name, "fingerprint": fp, "public_key": line,
                "deployed_at": keys.now_iso(), "state": "deployed"})
            return session

    async def _acquire(self) -> _Session:
        assert self._pool_lock is not None
        now = time.monotonic()
        async with self._pool_lock:
            keep: list[_Session] = []
            for s in self._sessions:
                stale = s.users == 0 and (now - s.last_used > IDLE_CLOSE
                                          or now - s.created > MAX_CONN_AGE)
                if s.dead or stale:
                    s.close()
                else:
                    keep.append(s)
            self._sessions = keep
            best = min(keep, key=lambda s: s.users, default=None)
            if best is not None and (best.users == 0 or
                                     len(keep) + self._connecting >= self.max_connections):
                best.users += 1
                best.last_used = now
                return best
            self._connecting += 1
        try:
            session = await self._open_session()
        except Exception:
            if best is not None and not best.dead:
                best.users += 1
                return best
            raise
        finally:
            self._connecting -= 1
        session.users = 1
        async with self._pool_lock:
            self._sessions.append(session)
        return session

    def _release(self, session: _Session) -> None:
        session.users = max(0, session.users - 1)
        session.last_used = time.monotonic()

    async def _with(self, fn: Callable[[asyncssh.SFTPClient, _Session], Awaitable[T]],
                    retry: bool = True) -> T:
        """Run ``fn`` on a leased session; retried once on a fresh connection when
        the connection turns out to be dead (only for idempotent operations)."""
        for attempt in range(2):
            session = await self._acquire()
            try:
                assert session.sftp is not None
                return await fn(session.sftp, session)
            except _CONNECTION_ERRORS:
                session.dead = True
                if attempt or not retry:
                    raise
            finally:
                self._release(session)
        raise AssertionError("unreachable")

    async def _close_all(self) -> None:
        sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()
        for s in sessions:
            if s.conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.conn.wait_closed(), 5)

    def close(self) -> None:
        lt = self._loop
        if lt is None:
            return
        if not lt.loop.is_closed() and not lt.in_loop():
            with contextlib.suppress(BaseException):
                lt.submit(self._close_all()).result(15)
        with self._lock:
            lt.stop()
            self._loop = None

    # -- helpers on the loop -------------------------------------------------------------
    @staticmethod
    async def _stat_or_none(sftp: asyncssh.SFTPClient, remote: str,
                            follow: bool = True) -> asyncssh.SFTPAttrs | None:
        try:
            return await (sftp.stat(remote) if follow else sftp.lstat(remote))
        except asyncssh.SFTPNoSuchFile:
            return None

    async def _check_parent(self, sftp: asyncssh.SFTPClient, path: str) -> None:
        if path == "/":
            return
        attrs = await self._stat_or_none(sftp, self._remote(parent_of(path)))
        if attrs is None:
            raise errors.ParentMissing("parent directory does not exist", path)
        if not _is_dir(attrs):
            raise errors.NotADirectory("parent is not a directory", path)

    async def _rmtree(self, sftp: asyncssh.SFTPClient, remote: str) -> None:
        names = [n for n in await sftp.readdir(remote) if _fname(n) not in (".", "..")]
        files = [f"{remote}/{_fname(n)}" for n in names if not _is_dir(n.attrs)]
        dirs = [f"{remote}/{_fname(n)}" for n in names if _is_dir(n.attrs)]
        for i in range(0, len(files), 64):
            await asyncio.gather(*(sftp.remove(f) for f in files[i:i + 64]))
        for d in dirs:
            await self._rmtree(sftp, d)
        await sftp.rmdir(remote)

    async def _close_pipe(self, pipe: _ReadPipe, session: _Session) -> None:
        try:
            await pipe.close()
        finally:
            self._release(session)

    async def _commit(self, pipe: _WritePipe, session: _Session, tail: bytes,
                      tmp: str, final: str) -> None:
        assert session.sftp is not None
        if tail:
            await pipe.push(tail)
        await pipe.drain()
        if session.fsync and self.fsync:
            await pipe.fh.fsync()
        await pipe.fh.close()
        if session.posix_rename:
            await session.sftp.posix_rename(tmp, final)
        else:
            if await self._stat_or_none(session.sftp, final, follow=False) is not None:
                await session.sftp.remove(final)
            await session.sftp.rename(tmp, final)
        self._release(session)

    async def _discard(self, pipe: _WritePipe, session: _Session, tmp: str) -> None:
        """Cancel a staged write and remove its temporary file; when the server
        cannot be reached now, the removal is done on the next connection."""
        try:
            await pipe.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pipe.fh.close(), 10)
            try:
                if session.dead or session.sftp is None:
                    raise ConnectionError("session gone")
                await asyncio.wait_for(session.sftp.remove(tmp), 10)
            except asyncssh.SFTPNoSuchFile:
                pass
            except Exception:
                try:
                    await self._with(lambda sftp, _s: sftp.remove(tmp), retry=False)
                except asyncssh.SFTPNoSuchFile:
                    pass
                except Exception:
                    self._orphans.add(tmp)
        finally:
            self._release(session)

    async def _clean_orphans(self, session: _Session) -> None:
        """Remove temporary files of uploads aborted while the server was away."""
        assert session.sftp is not None
        for tmp in list(self._orphans):
            try:
                await session.sftp.remove(tmp)
            except asyncssh.SFTPNoSuchFile:
                pass
            except Exception as exc:  # still cannot: keep it for the next connection
                log.debug("site %s: temporary file not removed yet: %s", self.name,
                          exc.__class__.__name__)
                continue
            self._orphans.discard(tmp)

    # -- the interface -----------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        remote = self._remote(path)
        attrs = self._run(self._with(lambda sftp, _s: sftp.stat(remote)), path)
        return _entry(base_name(path), attrs)

    def list(self, path: str) -> list[Entry]:
        remote = self._remote(path)

        async def op(sftp: asyncssh.SFTPClient, _s: _Session) -> list[Entry]:
            try:
                names = await _scandir(sftp, remote)
            except (asyncssh.SFTPFailure, asyncssh.SFTPNoSuchFile):
                # OpenSSH answers "no such file" for a file (ENOTDIR): tell them apart
                attrs = await sftp.stat(remote)
                if not _is_dir(attrs):
                    raise errors.NotADirectory("not a directory", path) from None
                raise
            out: list[Entry] = []
            links: list[str] = []
            for raw, perms, size, mtime in names:
                name = raw.decode("utf-8", "surrogateescape")
                if name in (".", "..") or name.startswith(TEMP_PREFIX):
                    continue
                if perms is not None and stat_mod.S_ISLNK(perms):
                    links.append(name)
                else:
                    out.append(_entry_from(name, perms, size, mtime, None))
            if links:  # resolve symbolic links (rare): one stat each, concurrently
                res = await asyncio.gather(*(sftp.stat(f"{remote}/{n}") for n in links),
                                           return_exceptions=True)
                out.extend(_entry(n, a) for n, a in zip(links, res, strict=True)
                           if isinstance(a, asyncssh.SFTPAttrs))
            return out

        return self._run(self._with(op), path)

    def open_read(self, path: str, offset: int = 0, length: int | None = None) -> Reader:
        remote = self._remote(path)

        async def op() -> tuple[_Session, _ReadPipe, int]:
            session = await self._acquire()
            try:
                assert session.sftp is not None
                fh = await session.sftp.open(remote, "rb", block_size=0)
                try:
                    attrs = await fh.stat()
                    if _is_dir(attrs):
                        raise errors.IsADirectory("is a directory", path)
                    size = int(attrs.size or 0)
                    start = min(max(0, offset), size)
                    end = size if length is None else min(size, start + max(0, length))
                    return session, _ReadPipe(fh, start, end, session.read_len), end - start
                except BaseException:
                    await fh.close()
                    raise
            except BaseException:
                self._release(session)
                raise

        async def with_retry() -> tuple[_Session, _ReadPipe, int]:
            try:
                return await op()
            except _CONNECTION_ERRORS:
                return await op()

        session, pipe, remaining = self._run(with_retry(), path)
        return _SFTPReader(self, path, session, pipe, remaining)

    def open_write(self, path: str, size_hint: int | None = None) -> Writer:
        self.check_writable(path)
        if path == "/":
            raise errors.IsADirectory("is a directory", path)
        final = self._remote(path)
        tmp = posixpath.join(posixpath.dirname(final), f"{TEMP_PREFIX}{uuid.uuid4().hex}")

        async def op() -> tuple[_Session, _WritePipe]:
            session = await self._acquire()
            try:
                assert session.sftp is not None
                await self._check_parent(session.sftp, path)
                attrs = await self._stat_or_none(session.sftp, final)
                if attrs is not None and _is_dir(attrs):
                    raise errors.IsADirectory("is a directory", path)
                fh = await session.sftp.open(tmp, "xb", block_size=0)
                return session, _WritePipe(fh, session.write_len, asyncio.get_running_loop())
            except BaseException:
                self._release(session)
                raise

        session, pipe = self._run(op(), path)
        return _SFTPWriter(self, path, final, tmp, session, pipe)

    def mkdir(self, path: str) -> None:
        self.check_writable(path)
        remote = self._remote(path)

        async def op(sftp: asyncssh.SFTPClient, _s: _Session) -> None:
            try:
                await sftp.mkdir(remote)
            except asyncssh.SFTPError:
                if await self._stat_or_none(sftp, remote, follow=False) is not None:
                    raise errors.Exists("already exists", path) from None
                await self._check_parent(sftp, path)
                raise

        self._run(self._with(op, retry=False), path)

    def remove(self, path: str, recursive: bool = False) -> None:
        self.check_writable(path)
        if path == "/":
            raise errors.PermissionDenied("cannot remove a site root", path)
        remote = self._remote(path)

        async def op(sftp: asyncssh.SFTPClient, _s: _Session) -> None:
            attrs = await sftp.lstat(remote)
            if not _is_dir(attrs):
                await sftp.remove(remote)
            elif recursive:
                await self._rmtree(sftp, remote)
            else:
                try:
                    await sftp.rmdir(remote)
                except asyncssh.SFTPFailure:
                    names = [n for n in await sftp.readdir(remote)
                             if _fname(n) not in (".", "..")]
                    if names:
                        raise errors.NotEmpty("directory not empty", path) from None
                    raise

        self._run(self._with(op, retry=False), path, timeout=None if recursive else IO_TIMEOUT)

    def rename(self, src: str, dst: str, overwrite: bool = False) -> None:
        self.check_writable(dst)
        self.check_writable(src)
        rs, rd = self._remote(src), self._remote(dst)

        async def op(sftp: asyncssh.SFTPClient, session: _Session) -> None:
            sattrs = await self._stat_or_none(sftp, rs, follow=False)
            if sattrs is None:
                raise errors.NotFound("source does not exist", src)
            if rs == rd:
                return
            await self._check_parent(sftp, dst)
            dattrs = await self._stat_or_none(sftp, rd, follow=False)
            if dattrs is not None:
                if not overwrite:
                    raise errors.Exists("target exists", dst)
                if _is_dir(dattrs):
                    await self._rmtree(sftp, rd)
                elif _is_dir(sattrs) or not session.posix_rename:
                    await sftp.remove(rd)
            if session.posix_rename:
                await sftp.posix_rename(rs, rd)
            else:
                await sftp.rename(rs, rd)

        self._run(self._with(op, retry=False), src, timeout=None)

    def copy(self, src: str, dst: str, overwrite: bool = False) -> None:
        """Server-side copy with the ``copy-data`` extension (OpenSSH >= 9.0)."""
        self.check_writable(dst)
        rs, rd = self._remote(src), self._remote(dst)
        tmp = posixpath.join(posixpath.dirname(rd), f"{TEMP_PREFIX}{uuid.uuid4().hex}")

        async def op(sftp: asyncssh.SFTPClient, session: _Session) -> None:
            if not session.copy_data:
                raise errors.Unsupported("the server offers no copy-data extension", src)
            sattrs = await self._stat_or_none(sftp, rs)
            if sattrs is None:
                raise errors.NotFound("source does not exist", src)
            if _is_dir(sattrs):
                raise errors.IsADirectory("server-side copy is for files", src)
            await self._check_parent(sftp, dst)
            dattrs = await self._stat_or_none(sftp, rd)
            if dattrs is not None:
                if _is_dir(dattrs):
                    raise errors.IsADirectory("target is a directory", dst)
                if not overwrite:
                    raise errors.Exists("target exists", dst)
            fin = await sftp.open(rs, "rb", block_size=0)
            try:
                fout = await sftp.open(tmp, "xb", block_size=0)
                try:
                    await sftp.remote_copy(fin, fout)
                    if session.fsync and self.fsync:
                        await fout.fsync()
                finally:
                    await fout.close()
                if session.posix_rename:
                    await sftp.posix_rename(tmp, rd)
                else:
                    if dattrs is not None:
                        await sftp.remove(rd)
                    await sftp.rename(tmp, rd)
            except BaseException:
                with contextlib.suppress(Exception):
                    await sftp.remove(tmp)
                raise
            finally:
                await fin.close()

        self._run(self._with(op, retry=False), src, timeout=None)

    # -- site health and the key ---------------------------------------------------------
    def checksum(self, path: str, algorithm: str) -> str | None:
        """The server's own digest of the file (``openssl dgst`` or ``sha256sum``
        and kin, over an SSH exec channel), or None when the site cannot give
        one (no shell access, an sftp-only account, no such tool, or
        ``server_checksums: false``): callers then read the file.  The command
        line is fixed; the path goes on stdin to ``xargs -0`` and reaches the
        tool as an argument, never as shell input."""
        alg = algorithm.lower()
        tool = _DIGEST_COMMANDS.get(alg)
        if tool is None or not self.server_checksums:
            return None
        remote = self._remote(path)
        if not remote.startswith("/"):
            remote = "./" + remote  # never taken for an option
        # OpenSSL where present (SHA-NI: ~3x coreutils' sha256sum), else coreutils;
        # the path is "$1" of a fixed script, read by xargs from stdin
        command = (f"xargs -0 sh -c 'openssl dgst -{alg} -r -- \"$1\" 2>/dev/null "
                   f"|| {tool} -- \"$1\"' sh")

        async def op(sftp: asyncssh.SFTPClient, session: _Session) -> str | None:
            assert session.conn is not None
            try:
                done = await session.conn.run(
                    command, input=remote.encode("utf-8", "surrogateescape") + b"\0",
                    encoding=None, check=False)
            except asyncssh.ChannelOpenError:  # exec refused (e.g. a subsystem-only account)
                self._digests_off("the server refused to run a command")
                return None
            m = _DIGEST_LINE.match(done.stdout if isinstance(done.stdout, bytes) else b"")
            if done.exit_status == 0 and m:
                return m.group(1).decode().lower()
            attrs = await self._stat_or_none(sftp, remote)
            if attrs is not None and not _is_dir(attrs):  # the file is there: no tool
                self._digests_off(f"neither openssl nor {tool} ran")
            return None  # no such file, a directory: the caller's read says what

        return self._run(self._with(op), path)

    def _digests_off(self, why: str) -> None:
        """The site cannot hash files itself: say so once, then stop asking."""
        if self.server_checksums:
            self.server_checksums = False
            log.info("site %s: no server-side checksums (%s); copies are verified by "
                     "reading back", self.name, why)

    def probe(self) -> None:
        """Fresh login (so that a revoked key shows at once), root exists and is a
        directory, and unless read-only a file can be created there."""
        async def login() -> None:
            try:
                session = await self._open_session()
            except errors.Unavailable as exc:
                if "authentication failed" in exc.message:
                    await self._close_all()  # existing connections must not outlive it
                raise
            assert self._pool_lock is not None
            async with self._pool_lock:
                if len(self._sessions) < self.max_connections:
                    self._sessions.append(session)
                else:
                    session.close()

        self._run(login())
        super().probe()
        if self.read_only:
            return
        try:
            w = self.open_write(f"/{TEMP_PREFIX}probe-{uuid.uuid4().hex}")
            w.abort()
        except errors.AdaptorError as exc:
            if isinstance(exc, errors.Unavailable):
                raise
            raise errors.Unavailable(f"site {self.name}: root is not writable: "
                                     f"{exc.message}") from exc

    def key_status(self) -> str:
        """Whether the key is installed, for ``fedgate check`` (no side effects):
        ``installed``, ``installed (key_file)``, ``not installed``, ``not installed
        (a password is configured: installed on first use)``, ``revoked ...`` or
        ``unknown: <reason>``."""
        async def check() -> str:
            try:
                key = await asyncio.to_thread(self._key)  # file I/O off the loop
                session = await self._connect(key)
            except asyncssh.PermissionDenied:
                if self.key_file:
                    return "not accepted (key_file)"
                record = await asyncio.to_thread(self._records.get, self._record_key)
                if record and record.get("fingerprint") == keys.fingerprint(key):
                    return (f"revoked (installed {record.get('deployed_at')}, "
                            "no longer accepted)")
                if self._password:
                    return "not installed (a password is configured: installed on first use)"
                return "not installed"
            except Exception as exc:
                return f"unknown: {_connect_error(exc, self.host, self.port, self.name).message}"
            session.close()
            return "installed (key_file)" if self.key_file else "installed"

        err = self.pin.config_error()
        if err:
            return f"unknown: {err}"
        return self._run(check())

    def reset_key_record(self) -> None:
        """Forget that the key was installed, so that a configured password may
        install it again after it was removed from authorized_keys."""
        record = self._records.get(self._record_key)
        if record is not None:
            self._records.put(self._record_key, {**record, "state": "reset"})

    def public_key(self) -> str:
        """The public key line the site must accept (for operators)."""
        return keys.public_line(self._key(), f"fedgate@{self.name}")
