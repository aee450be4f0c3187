"""cheroot runner for the gateway.

Sized for many clients: idle keep-alive sockets are parked in cheroot's
selector (they hold no worker thread), 64 worker threads serve active
requests, a listen backlog of 1024 absorbs bursts and a 60 s socket timeout
drops dead peers.
"""

from __future__ import annotations

import logging
import select
import threading
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.makefile import MakeFile, StreamReader, StreamWriter

from fedgate.config import Config

log = logging.getLogger(__name__)

THREADS = 64
BACKLOG = 1024
SOCKET_TIMEOUT_S = 60
KEEPALIVE_LIMIT = 4096


class _DirectWriter(StreamWriter):
    """cheroot's writer copies every chunk into a bytearray, then copies it again
    for each partial ``send``.  Large chunks (our 1 MiB blocks) go straight to
    ``sendall`` instead: one copy into the kernel, as a Go server does."""

    def __init__(self, sock: Any, mode: str = "wb", bufsize: int = 8192) -> None:
        super().__init__(sock, mode, bufsize)
        self._direct = sock

    def write(self, b: Any) -> Any:
        if len(b) >= 65536:
            with self._write_lock:  # type: ignore[attr-defined]
                self._flush_unlocked()  # type: ignore[attr-defined]
                self._direct.sendall(b)
            self.bytes_written += len(b)
            return len(b)
        return super().write(b)


class _DirectReader(StreamReader):
    """cheroot's reader is the pure-Python ``_pyio.BufferedReader``: a 1 MiB
    ``read`` (a PUT body block) costs a recv per 8 KiB buffer fill and several
    joins and slices, about a CPU-second per GiB.  Large reads here take what is
    buffered and then ``recv_into`` one preallocated block: the bytes are copied
    once out of the kernel and once into the ``bytes`` handed on (callers may
    keep it, so it must not be reused)."""

    def __init__(self, sock: Any, mode: str = "rb", bufsize: int = 8192) -> None:
        super().__init__(sock, mode, bufsize)
        self._direct = sock

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < DIRECT_READ_MIN:
            return super().read(size)
        with self._read_lock:  # type: ignore[attr-defined]
            pending = self._read_buf[self._read_pos:]  # type: ignore[attr-defined]
            if len(pending) >= size:
                self._read_pos += size  # type: ignore[attr-defined]
                data = bytes(pending[:size])
            else:
                self._reset_read_buf()  # type: ignore[attr-defined]
                buf = bytearray(size)
                view = memoryview(buf)
                n = len(pending)
                view[:n] = pending
                while n < size:
                    try:
                        got = self._direct.recv_into(view[n:])
                    except InterruptedError:
                        continue
                    if not got:
                        break  # EOF: fewer bytes, as BufferedReader.read does
                    n += got
                data = bytes(view[:n])
                view.release()
        self.bytes_read += len(data)
        return data


#: reads at least this large bypass cheroot's Python buffer
DIRECT_READ_MIN = 65536


def _makefile(sock: Any, mode: str = "r", bufsize: int = 8192) -> Any:
    if "r" in mode:
        return _DirectReader(sock, mode, bufsize)
    return _DirectWriter(sock, mode, bufsize)


class _Connection(cheroot_server.HTTPConnection):
    def __init__(self, server: Any, sock: Any, makefile: Any = _makefile) -> None:
        if makefile is MakeFile:  # plain TCP (TLS brings its adapter's own makefile)
            makefile = _makefile
        super().__init__(server, sock, makefile)


class Server(wsgi.Server):
    """cheroot hands a freshly accepted connection straight to a worker thread,
    which then blocks until the client speaks: 200 silent sockets would hold
    every thread.  Here a connection goes to a worker only once it has data;
    until then it waits in cheroot's selector like an idle keep-alive one."""

    def process_conn(self, conn: Any) -> None:
        if not conn.rfile.has_data():
            try:
                ready, _, _ = select.select([conn.socket], [], [], 0)
            except (OSError, ValueError):
                ready = [conn.socket]
            if not ready:
                self._connections.put(conn)  # type: ignore[attr-defined]
                return
        super().process_conn(conn)


def make_server(config: Config, app: Any, bind: tuple[str, int] | None = None) -> Server:
    host, port = bind or config.listen.webdav
    server = Server((host, port), app, numthreads=THREADS, request_queue_size=BACKLOG,
                    timeout=SOCKET_TIMEOUT_S, shutdown_timeout=5, server_name="fedgate")
    server.max_request_body_size = 0  # unlimited: PUTs stream
    server.keep_alive_conn_limit = KEEPALIVE_LIMIT
    server.ConnectionClass = _Connection
    if config.listen.tls_cert and config.listen.tls_key:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(config.listen.tls_cert, config.listen.tls_key)
    return server


def start_in_thread(server: wsgi.Server) -> threading.Thread:
    server.prepare()
    t = threading.Thread(target=server.serve, name="fedgate-dav", daemon=True)
    t.start()
    return t


def bound_port(server: wsgi.Server) -> int:
    return int(server.bind_addr[1])
