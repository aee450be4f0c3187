"""Leaner bulk-data send path for the sftp adaptor's asyncssh connections.

asyncssh builds every outgoing SSH packet with about fifteen copies of the
payload (SFTP framing, channel buffer, 32 KiB channel slices, SSH framing,
padding, cipher output, MAC concatenation) and precedes *each* encrypted
packet with an ``SSH_MSG_IGNORE`` (the RFC 4251 9.3.1 counter-measure for
CBC-mode ciphers, which the adaptor never negotiates).  At 1 GiB that is ~64k
packets through Python, half of them empty, and most of the CPU of an upload.

:func:`install` replaces, on one connection and its SFTP channel only (instance
attributes; the library's classes stay as they are), three methods with
equivalents that keep asyncssh's state handling (send window, deferral during
key exchange, rekey accounting, sequence numbers, logging at packet level)
but:

* keep the channel's send buffer as zero-copy ``memoryview`` slices of the
  caller's immutable buffers;
* join an SSH packet's pieces once, encrypt AES-GCM with a cached key object
  (one ``AESGCM`` per key instead of one per packet), and hand header and
  ciphertext to the transport without gluing them together again;
* skip the ``SSH_MSG_IGNORE`` when the negotiated cipher is not CBC.

Everything it does not recognise (another asyncssh layout, compression, a CBC
cipher) falls back to the library's own code: :func:`install` returns False
and changes nothing.
"""

from __future__ import annotations

import os
import struct
import types
from time import monotonic
from typing import Any

from asyncssh.constants import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_EOF,
    MSG_CHANNEL_EXTENDED_DATA,
    MSG_DEBUG,
    MSG_KEX_LAST,
    MSG_NEWKEYS,
    MSG_SERVICE_ACCEPT,
    MSG_SERVICE_REQUEST,
    MSG_USERAUTH_BANNER,
    MSG_USERAUTH_LAST,
)

try:  # internals this module relies on; missing: no fast path
    from asyncssh.encryption import GCMEncryption
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    _AVAILABLE = True
except ImportError:  # pragma: no cover - other asyncssh/cryptography layouts
    _AVAILABLE = False

_EARLY_TYPES = frozenset({MSG_DEBUG, MSG_SERVICE_REQUEST, MSG_SERVICE_ACCEPT})
#: attributes of asyncssh objects this module reads or writes
_CONN_ATTRS = ("_auth_complete", "_kex_complete", "_rekey_bytes_sent", "_rekey_bytes",
               "_rekey_seconds", "_rekey_time", "_send_kexinit", "_deferred_packets",
               "_send_encryption", "_compressor", "_send_enchdrlen", "_send_blocksize",
               "_send_seq", "_strict_kex", "_transport", "_auth_in_progress",
               "_compress_after_auth", "_enc_alg_cs", "logger")
_CHAN_ATTRS = ("_send_buf", "_send_buf_len", "_send_window", "_send_pktsize", "_send_state",
               "_send_chan", "_conn", "_encoding", "_pause_resume_writing", "_close_send",
               "_write_datatypes")


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


class _GCMState:
    """The cached AESGCM object of the connection's current send key."""

    __slots__ = ("aead", "enc")

    def __init__(self) -> None:
        self.enc: Any = None
        self.aead: Any = None


def _conn_send_packet(self: Any, pkttype: int, *args: Any, handler: Any = None) -> None:
    """asyncssh's ``SSHConnection.send_packet``, with fewer copies, a cached
    AES-GCM key and no per-packet MSG_IGNORE (non-CBC ciphers only)."""
    if (self._auth_complete and self._kex_complete and
            (self._rekey_bytes_sent >= self._rekey_bytes or
             (self._rekey_seconds and monotonic() >= self._rekey_time))):
        self._send_kexinit()
        self._kexinit_sent = True

    if (((pkttype in _EARLY_TYPES or pkttype > MSG_KEX_LAST) and not self._kex_complete) or
            (pkttype == MSG_USERAUTH_BANNER and
             not (self._auth_in_progress or self._auth_complete)) or
            (pkttype > MSG_USERAUTH_LAST and not self._auth_complete)):
        self._deferred_packets.append((pkttype, args))
        return

    enc = self._send_encryption
    if self._compressor is not None or (enc is not None and _is_cbc(self)):
        self._fg_orig_send_packet(pkttype, *args, handler=handler)
        return

    plen = 1
    for a in args:
        plen += len(a)
    blocksize = self._send_blocksize
    padlen = -(self._send_enchdrlen + plen) % blocksize
    if padlen < 4:
        padlen += blocksize
    packet = b"".join((bytes((padlen, pkttype)), *args, os.urandom(padlen)))
    pktlen = len(packet)
    hdr = _u32(pktlen)
    seq = self._send_seq
    transport = self._transport

    if enc is None:
        wire: tuple[bytes, ...] = (hdr, packet)
    elif type(enc) is GCMEncryption:
        state: _GCMState = self._fg_gcm
        cipher = enc._cipher
        if state.enc is not cipher:
            state.enc, state.aead = cipher, AESGCM(cipher._key)
        wire = (hdr, state.aead.encrypt(cipher._iv, packet, hdr))
        cipher._update_iv()
    else:
        body, mac = enc.encrypt_packet(seq, hdr, packet)
        wire = (body, mac)

    if transport:
        try:
            if self._fg_coalesced:  # joined with the other packets of this loop pass
                for piece in wire:
                    transport.write(piece)
            else:
                transport.write(b"".join(wire))
        except ConnectionError:  # pragma: no cover - as asyncssh does
            pass

    if pkttype == MSG_NEWKEYS and self._strict_kex:
        self._send_seq = 0
    else:
        self._send_seq = (seq + 1) & 0xffffffff
    if self._kex_complete:
        self._rekey_bytes_sent += pktlen
    if self.logger._debug_level >= 3:  # asyncssh logs packets only at level 3
        (handler or self).log_sent_packet(pkttype, seq,
                                          bytes((pkttype,)) + b"".join(args))


def _is_cbc(conn: Any) -> bool:
    alg = conn._enc_alg_cs
    return not isinstance(alg, bytes) or alg.endswith(b"-cbc")


def _chan_write(self: Any, data: Any, datatype: Any = None) -> None:
    """``SSHChannel.write`` without copying ``data`` into a bytearray: the
    buffer keeps a read-only view (callers hand over immutable bytes)."""
    if self._send_state != "open":
        raise BrokenPipeError("Channel not open for sending")
    if datatype is not None and datatype not in self._write_datatypes:
        raise OSError("Invalid extended data type")
    if not data:
        return
    view = memoryview(data if isinstance(data, bytes | memoryview) else bytes(data))
    self._send_buf.append((view, datatype))
    self._send_buf_len += len(view)
    self._flush_send_buf()


def _chan_write_parts(self: Any, parts: tuple[Any, ...]) -> None:
    """Queue several buffers as one write (no join)."""
    if self._send_state != "open":
        raise BrokenPipeError("Channel not open for sending")
    buf = self._send_buf
    for p in parts:
        if p:
            view = memoryview(p)
            buf.append((view, None))
            self._send_buf_len += len(view)
    self._flush_send_buf()


def _chan_flush_send_buf(self: Any) -> None:
    """``SSHChannel._flush_send_buf``: packets of up to the peer's packet size,
    each made of zero-copy slices of the queued buffers."""
    buf = self._send_buf
    conn = self._conn
    while buf and self._send_window:
        room = min(self._send_window, self._send_pktsize)
        datatype = buf[0][1]
        pieces: list[Any] = []
        size = 0
        while buf and size < room and buf[0][1] == datatype:
            view, _ = buf[0]
            take = room - size
            if len(view) > take:
                pieces.append(view[:take])
                buf[0] = (view[take:], datatype)
                size += take
            else:
                pieces.append(view)
                del buf[0]
                size += len(view)
        self._send_buf_len -= size
        self._send_window -= size
        if self._send_chan is None or conn is None:  # pragma: no cover - closing
            continue
        if datatype is None:
            conn.send_packet(MSG_CHANNEL_DATA, _u32(self._send_chan), _u32(size), *pieces,
                             handler=self)
        else:
            conn.send_packet(MSG_CHANNEL_EXTENDED_DATA, _u32(self._send_chan), _u32(datatype),
                             _u32(size), *pieces, handler=self)
    self._pause_resume_writing()
    if not buf:
        if self._send_state == "eof_pending":
            self.send_packet(MSG_CHANNEL_EOF)
            self._send_state = "eof"
        elif self._send_state == "close_pending":
            self._close_send()


def _sftp_send_packet(self: Any, pkttype: int, pktid: Any, *args: bytes) -> None:
    """``SFTPHandler.send_packet`` without joining the message: its pieces go
    to the channel as they are (the data of a write is not copied here)."""
    writer = self._writer
    if not writer:
        from asyncssh import SFTPNoConnection
        raise SFTPNoConnection("Connection not open")
    chan = writer.channel
    if chan.is_closing():
        return
    n = 1
    for a in args:
        n += len(a)
    chan._fg_write_parts((_u32(n) + bytes((pkttype,)), *args))
    if self.logger._debug_level >= 3:
        self.log_sent_packet(pkttype, pktid, bytes((pkttype,)) + b"".join(args))


#: asyncssh releases (major, minor) whose internals this module was checked against
TESTED_ASYNCSSH = frozenset({(2, 24)})


def lean_path_allowed() -> bool:
    """Only on a tested asyncssh release, and unless FEDGATE_SFTP_LEAN=0: a new
    release may keep the attribute names but change what they mean."""
    if os.environ.get("FEDGATE_SFTP_LEAN", "1") == "0":
        return False
    try:
        import asyncssh

        major, minor = (int(x) for x in asyncssh.__version__.split(".")[:2])
    except (ImportError, AttributeError, ValueError):
        return False
    return (major, minor) in TESTED_ASYNCSSH


def install(conn: Any, sftp: Any, coalesced: bool) -> bool:
    """Switch ``conn`` and the channel of its SFTP client ``sftp`` to the lean
    send path (``coalesced``: the transport joins the writes of one loop pass
    itself).  Returns False (and changes nothing) when this asyncssh's
    internals are not the ones it was written for."""
    if not _AVAILABLE or not lean_path_allowed():
        return False
    handler: Any = getattr(sftp, "_handler", None)
    writer = getattr(handler, "_writer", None)
    chan = getattr(writer, "channel", None)
    if handler is None or chan is None or not all(hasattr(conn, a) for a in _CONN_ATTRS) \
            or not all(hasattr(chan, a) for a in _CHAN_ATTRS) \
            or getattr(chan, "_encoding", None) or not hasattr(conn.logger, "_debug_level") \
            or not hasattr(getattr(handler, "logger", None), "_debug_level") \
            or not callable(getattr(handler, "send_packet", None)):
        return False
    if conn._compressor is not None or _is_cbc(conn):
        return False
    # the buffer must not hold bytearrays that our flush would slice as views
    chan._send_buf[:] = [(memoryview(bytes(b)), t) for b, t in chan._send_buf]
    conn._fg_gcm = _GCMState()
    conn._fg_coalesced = coalesced
    conn._fg_orig_send_packet = conn.send_packet
    conn.send_packet = types.MethodType(_conn_send_packet, conn)
    chan.write = types.MethodType(_chan_write, chan)
    chan._fg_write_parts = types.MethodType(_chan_write_parts, chan)
    chan._flush_send_buf = types.MethodType(_chan_flush_send_buf, chan)
    handler.send_packet = types.MethodType(_sftp_send_packet, handler)
    return True


# -- directory listings ------------------------------------------------------------------

_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME = 0x1, 0x2, 0x4, 0x8
_ATTR_EXTENDED = 0x80000000
_ATTR_KNOWN_V3 = _ATTR_SIZE | _ATTR_UIDGID | _ATTR_PERMISSIONS | _ATTR_ACMODTIME | _ATTR_EXTENDED
_U32, _U64, _TWO_U32 = struct.Struct(">I"), struct.Struct(">Q"), struct.Struct(">II")

#: one directory entry of an SFTPv3 NAME reply: (filename, permissions, size, mtime)
NameTuple = tuple[bytes, "int | None", "int | None", "int | None"]


def parse_names_v3(buf: bytes, start: int = 0) -> list[NameTuple]:
    """The entries of an SFTPv3 ``SSH_FXP_NAME`` reply body (after the request
    id): ``count``, then per entry filename, longname and ATTRS.  Raises
    ValueError on a malformed or truncated reply (the caller falls back)."""
    u32, u64, two = _U32.unpack_from, _U64.unpack_from, _TWO_U32.unpack_from
    try:
        (count,) = u32(buf, start)
        i = start + 4
        out: list[NameTuple] = []
        append = out.append
        for _ in range(count):
            (n,) = u32(buf, i)
            i += 4
            name = buf[i:i + n]
            i += n
            (n,) = u32(buf, i)
            i += 4 + n  # longname
            (flags,) = u32(buf, i)
            i += 4
            if flags & ~_ATTR_KNOWN_V3:
                raise ValueError(f"unsupported attribute flags 0x{flags:08x}")
            size = perms = mtime = None
            if flags & _ATTR_SIZE:
                (size,) = u64(buf, i)
                i += 8
            if flags & _ATTR_UIDGID:
                i += 8
            if flags & _ATTR_PERMISSIONS:
                (perms,) = u32(buf, i)
                perms &= 0xffff
                i += 4
            if flags & _ATTR_ACMODTIME:
                (_atime, mtime) = two(buf, i)
                i += 8
            if flags & _ATTR_EXTENDED:
                (ext,) = u32(buf, i)
                i += 4
                for _ in range(2 * ext):
                    (n,) = u32(buf, i)
                    i += 4 + n
            if i > len(buf):
                raise ValueError("truncated NAME reply")
            append((name, perms, size, mtime))
    except struct.error as exc:
        raise ValueError("truncated NAME reply") from exc
    return out
