"""The Adaptor interface: the small contract every storage back end fulfils.

Paths given to an adaptor are *site-relative*, already validated by
``fedgate.namespace`` (no ``.``/``..``/empty segments, no NUL, no backslash):
``"/"`` is the site's root, other paths start with ``"/"`` and have no
trailing slash.  Adaptors map them under their own root (folder, bucket +
prefix, URL) and MUST NOT let a path escape it.

Adaptors are synchronous and MUST be safe to call from many threads at once
(the gateway is a threaded WSGI server; the staging service calls them with
``asyncio.to_thread``).  Every back-end exception is translated into
``adaptors.errors`` at the adaptor boundary.
"""

from __future__ import annotations

import enum
import hashlib
import posixpath
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from adaptors import errors

#: Size of the blocks the gateway and the transfer engine move (1 MiB).
BLOCK_SIZE = 1024 * 1024

#: prefix of staged uploads; adaptors hide such names from listings
TEMP_PREFIX = ".fedgate-tmp-"


@dataclass(frozen=True, slots=True)
class Entry:
    """A normalised directory entry.  Property getters read only these fields."""

    name: str
    """Base name ("" for a site root)."""
    is_dir: bool
    size: int = 0
    mtime: datetime | None = None
    """Aware UTC modification time, or None when the back end has none."""
    etag: str | None = None
    """Unquoted entity tag; None lets the gateway derive one from size+mtime."""
    checksum: Mapping[str, str] | None = None
    """Known checksums, e.g. ``{"md5": "..."}``, never computed just for a listing."""
    content_type: str | None = None

    def with_name(self, name: str) -> Entry:
        return Entry(name, self.is_dir, self.size, self.mtime, self.etag, self.checksum,
                     self.content_type)


def utc_from_timestamp(ts: float | None) -> datetime | None:
    """Aware UTC datetime from a POSIX timestamp (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


class Capability(enum.Flag):
    """Optional abilities; callers fall back to streaming when one is missing."""

    NONE = 0
    SERVER_COPY = enum.auto()
    """``copy()`` copies within the site without moving data through the gateway."""
    ATOMIC_RENAME = enum.auto()
    """``rename()`` is atomic and cheap (same-site MOVE costs no data transfer)."""
    CHECKSUM = enum.auto()
    """``checksum()`` asks the server for a checksum without reading the data here."""
    THIRD_PARTY_COPY = enum.auto()
    """``copy_from()`` copies from another adaptor of the same kind server to server."""


@runtime_checkable
class Reader(Protocol):
    """A readable stream returned by :meth:`Adaptor.open_read`."""

    def read(self, size: int = -1) -> bytes: ...
    def close(self) -> None: ...


class Writer(ABC):
    """A staged write.  Data becomes visible at the target only on :meth:`commit`.

    Implementations MUST guarantee: until ``commit()`` returns, readers of the
    target see the previous content (or nothing); ``abort()`` (or garbage
    collection of an uncommitted writer) leaves no partial data visible and
    removes temporary objects/uploads.  ``commit()`` and ``abort()`` are
    idempotent; calling ``write()`` after either raises ``ValueError``.
    """

    bytes_written: int = 0

    @abstractmethod
    def write(self, data: bytes) -> int:
        """Append ``data``; return ``len(data)``."""

    @abstractmethod
    def commit(self) -> None:
        """Make the written data visible at the target, atomically."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written; the target keeps its previous content."""

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@dataclass(frozen=True)
class OptionSpec:
    """One site option an adaptor accepts in the configuration file."""

    type: type | tuple[type, ...]
    required: bool = False
    secret: bool = False
    """Secrets are resolved from ``${ENV}``/``file:`` and never logged or echoed."""
    default: Any = None
    help: str = ""


@dataclass
class AdaptorContext:
    """What the host process gives an adaptor beside its own options.

    ``data_dir`` is where the gateway keeps its own files; ``encrypt``/
    ``decrypt`` seal secrets with the configured ``secret_key`` (Fernet);
    ``records`` is a small durable key/value store for things like deployed-key
    records (it lives in the state store).
    """

    data_dir: Path
    encrypt: Callable[[bytes], bytes] = field(default=lambda b: b)
    decrypt: Callable[[bytes], bytes] = field(default=lambda b: b)
    records: MutableRecords | None = None


class MutableRecords(Protocol):
    def get_record(self, kind: str, key: str) -> dict[str, Any] | None: ...
    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None: ...


#: common options every site has, validated by the config loader
COMMON_OPTIONS: dict[str, OptionSpec] = {
    "name": OptionSpec(str, required=True, help="site name, first path segment"),
    "type": OptionSpec(str, required=True),
    "read_only": OptionSpec(bool, default=False),
    "max_connections": OptionSpec(int, default=8),
}


class Adaptor(ABC):
    """A storage back end mounted as one site.

    Subclasses declare ``type_name``, ``OPTIONS`` (their site options besides
    :data:`COMMON_OPTIONS`) and ``capabilities``, and implement the abstract
    methods.  Constructors MUST NOT do network I/O (a site that is down must
    not stop the gateway from starting); connect lazily and report problems
    through :meth:`probe` and by raising :class:`errors.Unavailable`.
    """

    type_name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {}
    capabilities: ClassVar[Capability] = Capability.NONE

    def __init__(self, name: str, options: Mapping[str, Any], context: AdaptorContext) -> None:
        self.name = name
        self.options = dict(options)
        self.context = context
        self.read_only = bool(options.get("read_only", False))

    # -- description -------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Non-secret facts for the infrastructure/location documents.

        Keys: ``host``, ``port``, ``type``, ``mount`` (any may be None).
        """
        return {"host": None, "port": None, "type": self.type_name, "mount": None}

    # -- required ----------------------------------------------------------
    @abstractmethod
    def stat(self, path: str) -> Entry:
        """Entry of ``path``; :class:`errors.NotFound` when missing."""

    @abstractmethod
    def list(self, path: str) -> list[Entry]:
        """Entries directly inside directory ``path``, in one back-end round trip
        where the protocol allows.  :class:`errors.NotADirectory` for a file."""

    def iter_list(self, path: str) -> Iterator[Entry]:
        """:meth:`list` as an iterator.  Back ends that list in pages SHOULD
        yield each page as it arrives (fetching the next meanwhile), so that a
        big PROPFIND renders while the listing is still coming; errors as
        :meth:`list`'s.  The default yields :meth:`list`'s entries."""
        yield from self.list(path)

    @abstractmethod
    def open_read(self, path: str, offset: int = 0, length: int | None = None) -> Reader:
        """A stream of ``length`` bytes (all to EOF when None) from ``offset``."""

    @abstractmethod
    def open_write(self, path: str, size_hint: int | None = None) -> Writer:
        """A staged writer for ``path`` (replacing it on commit).

        :class:`errors.ParentMissing` when the parent directory does not exist,
        :class:`errors.IsADirectory` when ``path`` is a directory.
        """

    @abstractmethod
    def mkdir(self, path: str) -> None:
        """Create one directory.  :class:`errors.Exists` if anything is there,
        :class:`errors.ParentMissing` if the parent is missing."""

    @abstractmethod
    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, or a directory (with ``recursive`` its whole tree;
        without it, :class:`errors.NotEmpty` unless empty)."""

    @abstractmethod
    def rename(self, src: str, dst: str, overwrite: bool = False) -> None:
        """Move ``src`` to ``dst`` within the site (files and directories).

        :class:`errors.Exists` if ``dst`` exists and not ``overwrite``; with
        ``overwrite`` an existing ``dst`` (file or tree) is replaced.
        """

    # -- optional ----------------------------------------------------------
    def copy(self, src: str, dst: str, overwrite: bool = False) -> None:
        """Server-side copy of a file (``Capability.SERVER_COPY``)."""
        raise errors.Unsupported(f"{self.type_name} sites have no server-side copy", src)

    def checksum(self, path: str, algorithm: str) -> str | None:
        """Server-computed checksum (lower-case hex) or None if not offered."""
        return None

    def copy_from(self, source: Adaptor, src: str, dst: str, overwrite: bool = False, *,
                  checksum: str | None = None,
                  cancel: threading.Event | None = None) -> str | None:
        """Third-party copy from ``source`` (``Capability.THIRD_PARTY_COPY``).

        With ``checksum`` (an algorithm name) an implementation MAY verify the
        copy with it on both servers and return that digest (lower-case hex);
        it returns None when it did not, and the caller verifies.  When
        ``cancel`` is set during a long copy, an implementation SHOULD stop it
        within a second, remove what it wrote and raise an AdaptorError."""
        raise errors.Unsupported("no third-party copy", src)

    def probe(self) -> None:
        """Check the site is reachable, authenticated, its root exists and (unless
        read-only) is writable.  Raises :class:`errors.Unavailable` with a clear,
        secret-free reason."""
        try:
            entry = self.stat("/")
        except errors.NotFound as exc:
            raise errors.Unavailable(f"root path does not exist: {exc.message}") from exc
        except errors.AdaptorError as exc:
            if isinstance(exc, errors.Unavailable):
                raise
            raise errors.Unavailable(exc.message) from exc
        if not entry.is_dir:
            raise errors.Unavailable("root path is not a directory")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections.  Further calls may reconnect."""

    # -- helpers for subclasses ---------------------------------------------
    def check_writable(self, path: str) -> None:
        if self.read_only:
            raise errors.ReadOnly(f"site {self.name} is read-only", path)


def parent_of(path: str) -> str:
    """Site-relative parent ("/" for top-level entries and the root)."""
    return posixpath.dirname(path.rstrip("/")) or "/"


def base_name(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def join(parent: str, name: str) -> str:
    return "/" + name if parent in ("", "/") else parent.rstrip("/") + "/" + name


def iter_chunks(reader: Reader, block_size: int = BLOCK_SIZE) -> Iterable[bytes]:
    """Yield blocks from a reader until EOF, closing it at the end."""
    try:
        while True:
            chunk = reader.read(block_size)
            if not chunk:
                return
            yield chunk
    finally:
        reader.close()


class HashingSink:
    """Counts and hashes bytes as they pass (one place for on-the-fly checksums)."""

    def __init__(self, algorithms: Iterable[str] = ("sha256",)) -> None:
        self.hashers = {a: hashlib.new(a) for a in algorithms}
        self.bytes = 0

    def update(self, data: bytes) -> None:
        self.bytes += len(data)
        for h in self.hashers.values():
            h.update(data)

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self.hashers.items()}


def stream_copy(
    source: Adaptor,
    src: str,
    target: Adaptor,
    dst: str,
    *,
    offset: int = 0,
    sink: HashingSink | None = None,
    on_chunk: Callable[[int], None] | None = None,
    block_size: int = BLOCK_SIZE,
) -> int:
    """Copy one file between any two adaptors, streaming with bounded memory.

    The target is written through a staged :class:`Writer`: it is committed only
    when every byte arrived, aborted otherwise (so no partial target is left).
    ``on_chunk`` is called with each block's length and may raise (for example
    to cancel).  Returns the number of bytes copied.
    """
    size_hint: int | None = None
    try:
        size_hint = source.stat(src).size
    except errors.AdaptorError:
        size_hint = None
    writer = target.open_write(dst, size_hint=size_hint)
    try:
        for chunk in iter_chunks(source.open_read(src, offset), block_size):
            writer.write(chunk)
            if sink is not None:
                sink.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer.bytes_written
