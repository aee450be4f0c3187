"""WebDAV resources over adaptors: the virtual root, site/directory collections
and files.  Property getters read the cached :class:`Entry` and never do I/O;
a collection's members come from ONE ``Adaptor.list`` call."""

from __future__ import annotations

import logging
import mimetypes
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from wsgidav.dav_error import HTTP_BAD_REQUEST, HTTP_FORBIDDEN, DAVError
from wsgidav.dav_provider import DAVCollection, DAVNonCollection

from adaptors import errors
from adaptors.base import Adaptor, Capability, Entry, Reader, Writer, stream_copy
from fedgate import namespace
from gateway.errors import dav_errors

if TYPE_CHECKING:
    from gateway.provider import FederatedProvider

log = logging.getLogger(__name__)

FEDGATE_NS = "{https://fedgate.dev/ns}"
SITE_STATUS = FEDGATE_NS + "site-status"


def _ts(entry: Entry) -> float | None:
    """Whole seconds: HTTP dates have no fractions, so If-Modified-Since works."""
    return float(int(entry.mtime.timestamp())) if entry.mtime is not None else None


class _SiteMixin:
    """What every resource on a site knows: its site, adaptor and entry."""

    provider: FederatedProvider
    path: str
    environ: dict[str, Any]

    def _init_site(self, provider: FederatedProvider, site: str, adaptor: Adaptor, rel: str,
                   entry: Entry) -> None:
        self.provider = provider
        self.site = site
        self.adaptor = adaptor
        self.rel = rel
        self.entry = entry

    def get_display_name(self) -> str:
        return self.entry.name or self.site

    def get_last_modified(self) -> float | None:
        return _ts(self.entry)

    def get_creation_date(self) -> float | None:
        return _ts(self.entry)

    def _changed(self, rel: str, deleted: bool = False) -> None:
        self.provider.note_change(self.site, self.adaptor, rel, deleted)

    def _dest(self, dest_path: str) -> tuple[str, Adaptor, str]:
        with dav_errors():
            norm = namespace.normalize(dest_path)
            site, rel = namespace.split(norm)
            if site is None or rel == "/":
                raise DAVError(HTTP_FORBIDDEN, "cannot copy or move onto a site root or /")
            return site, self.provider.federation.get(site), rel

    def _remove_meta(self, recursive: bool) -> None:
        self.provider.store.props_delete("/" + self.path.strip("/"), recursive=recursive)
        lm = self.provider.lock_manager
        if lm is not None:
            lm.remove_all_locks_from_url(self.get_ref_url(), recursive=recursive)

    def get_ref_url(self) -> str:  # overridden by wsgidav base; typed here for mypy
        return "/" + self.path.strip("/")


class SiteCollection(_SiteMixin, DAVCollection):
    """A directory on a site (including the site root)."""

    def __init__(self, path: str, environ: dict[str, Any], provider: FederatedProvider,
                 site: str, adaptor: Adaptor, rel: str, entry: Entry,
                 down: str | None = None) -> None:
        DAVCollection.__init__(self, path, environ)
        self._init_site(provider, site, adaptor, rel, entry)
        self.down = down  # reason when the site is unavailable

    # -- properties -------------------------------------------------------------
    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names: list[str] = DAVCollection.get_property_names(self, is_allprop=is_allprop)
        if self.rel == "/":
            names.append(SITE_STATUS)
        return names

    def get_property_value(self, name: str) -> Any:
        if name == SITE_STATUS and self.rel == "/":
            from wsgidav.util import etree

            el = etree.Element(name)
            el.text = self.down or "ok"
            return el
        return DAVCollection.get_property_value(self, name)

    def prevent_locking(self) -> bool:
        return self.down is not None

    # -- members -----------------------------------------------------------------
    def _list(self) -> list[Entry]:
        if self.down is not None:
            return []
        try:
            with dav_errors():
                return self.adaptor.list(self.rel)
        except DAVError:
            raise

    def _iter_list(self) -> Iterator[Entry]:
        """Like _list(), page by page where the adaptor lists in pages
        (entries arrive while later pages are still being fetched)."""
        if self.down is not None:
            return
        with dav_errors():
            yield from self.adaptor.iter_list(self.rel)

    def get_member_names(self) -> list[str]:
        return [e.name for e in self._list()]

    def get_member_list(self) -> list[Any]:
        entries = self._list()
        self.provider.prefetch_props(self.path, [e.name for e in entries], self.environ)
        return [self.provider.resource_for(self.site, self.adaptor,
                                           namespace.join(self.site, self._child(e.name)),
                                           self._child(e.name), e, self.environ)
                for e in entries]

    def _child(self, name: str) -> str:
        return "/" + name if self.rel == "/" else f"{self.rel}/{name}"

    def get_member(self, name: str) -> Any:
        return self.provider.get_resource_inst(
            namespace.join(self.site, self._child(name)), self.environ)

    # -- writing -------------------------------------------------------------------
    def _writable(self) -> None:
        if self.down is not None:
            raise DAVError(HTTP_FORBIDDEN, f"site {self.site} is unavailable: {self.down}")

    def create_empty_resource(self, name: str) -> FileResource:
        self._writable()
        rel = self._child(name)
        entry = Entry(name, False, 0)
        res = FileResource(namespace.join(self.site, rel), self.environ, self.provider,
                           self.site, self.adaptor, rel, entry, exists=False)
        if self.environ.get("REQUEST_METHOD") != "PUT":
            # LOCK on an unmapped URL creates an empty resource (RFC 4918 7.3)
            with dav_errors():
                w = self.adaptor.open_write(rel, size_hint=0)
                w.commit()
            self._changed(rel)
        return res

    def create_collection(self, name: str) -> None:
        self._writable()
        rel = self._child(name)
        with dav_errors():
            self.adaptor.mkdir(rel)
        self._changed(rel)

    def support_recursive_delete(self) -> bool:
        return True

    def delete(self) -> None:
        self._writable()
        if self.rel == "/":
            raise DAVError(HTTP_FORBIDDEN, "a site root cannot be deleted")
        with dav_errors():
            self.adaptor.remove(self.rel, recursive=True)
        self._remove_meta(recursive=True)
        self._changed(self.rel, deleted=True)

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        self._writable()
        site, adaptor, rel = self._dest(dest_path)
        with dav_errors():
            try:
                adaptor.mkdir(rel)
            except errors.Exists:
                if not adaptor.stat(rel).is_dir:
                    raise
        self.provider.store.props_copy(self.get_ref_url(), "/" + dest_path.strip("/"))
        self.provider.note_change(site, adaptor, rel)

    def support_recursive_move(self, dest_path: str) -> bool:
        try:
            site, adaptor, _ = self._dest(dest_path)
        except DAVError:
            return False
        return site == self.site and Capability.ATOMIC_RENAME in adaptor.capabilities

    def move_recursive(self, dest_path: str) -> None:
        self._writable()
        site, adaptor, rel = self._dest(dest_path)
        with dav_errors():
            adaptor.rename(self.rel, rel, overwrite=True)
        self.provider.store.props_move(self.get_ref_url(), "/" + dest_path.strip("/"))
        lm = self.provider.lock_manager
        if lm is not None:
            lm.remove_all_locks_from_url(self.get_ref_url(), recursive=True)
        self._changed(self.rel, deleted=True)
        self.provider.note_change(site, adaptor, rel)


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def single_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) of a one-range ``Range`` header, so that the back end is
    asked for exactly those bytes (None for no, several or unusable ranges)."""
    m = _RANGE.match(header or "")
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        start, end = max(size - int(m.group(2)), 0), size - 1
    return (start, end - start + 1) if 0 <= start <= end else None


class _LazyReader:
    """Seekable view of an adaptor file; opens the back-end stream at the first
    read, at the current offset (so Range requests become ranged reads)."""

    def __init__(self, adaptor: Adaptor, rel: str, span: tuple[int, int] | None = None) -> None:
        self.adaptor = adaptor
        self.rel = rel
        self.pos = 0
        self.span = span  # (start, length) of a single requested range, if any
        self._r: Reader | None = None

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("only absolute seeks")
        if offset != self.pos and self._r is not None:
            self._r.close()
            self._r = None
        self.pos = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        if self._r is None:
            length = self.span[1] if self.span and self.span[0] == self.pos else None
            with dav_errors():
                self._r = self.adaptor.open_read(self.rel, self.pos, length)
        with dav_errors():
            data = self._r.read(size)
        self.pos += len(data)
        return data

    def close(self) -> None:
        if self._r is not None:
            self._r.close()
            self._r = None


class _UploadSink:
    """The file-like object wsgidav writes a PUT body into."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def write(self, data: bytes) -> int:
        with dav_errors():
            return self.writer.write(data)

    def close(self) -> None:
        pass  # commit/abort happen in end_write


class FileResource(_SiteMixin, DAVNonCollection):
    def __init__(self, path: str, environ: dict[str, Any], provider: FederatedProvider,
                 site: str, adaptor: Adaptor, rel: str, entry: Entry,
                 exists: bool = True) -> None:
        DAVNonCollection.__init__(self, path, environ)
        self._init_site(provider, site, adaptor, rel, entry)
        self.exists = exists
        self._writer: Writer | None = None
        self._moved = False

    def get_content_length(self) -> int:
        return self.entry.size

    def get_content_type(self) -> str:
        if self.entry.content_type:
            return self.entry.content_type
        return mimetypes.guess_type(self.entry.name)[0] or "application/octet-stream"

    def get_etag(self) -> str | None:
        if self.entry.etag:
            return self.entry.etag
        ts = self.entry.mtime.timestamp() if self.entry.mtime else 0
        return f"{self.entry.size:x}-{int(ts * 1e6):x}"

    def support_etag(self) -> bool:
        return True

    def support_ranges(self) -> bool:
        return True

    def support_recursive_move(self, dest_path: str) -> bool:
        return False

    def get_content(self) -> _LazyReader:
        return _LazyReader(self.adaptor, self.rel,
                           single_range(self.environ.get("HTTP_RANGE"), self.entry.size))

    # -- PUT ---------------------------------------------------------------------------
    def begin_write(self, *, content_type: str | None = None) -> _UploadSink:
        length = self.environ.get("CONTENT_LENGTH")
        size = int(length) if length and length.isdigit() else None
        with dav_errors():
            self._writer = self.adaptor.open_write(self.rel, size_hint=size)
        return _UploadSink(self._writer)

    def end_write(self, *, with_errors: bool) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        length = self.environ.get("CONTENT_LENGTH")
        expected = int(length) if length and length.isdigit() else None
        if with_errors or (expected is not None and writer.bytes_written != expected):
            writer.abort()
            if not with_errors:
                log.warning("PUT %s: body ended after %d of %s bytes; upload discarded",
                            self.path, writer.bytes_written, expected)
                raise DAVError(HTTP_BAD_REQUEST, "request body incomplete")
            return
        with dav_errors():
            writer.commit()
            self.entry = self.adaptor.stat(self.rel)
        self.exists = True
        self._changed(self.rel)

    # -- DELETE / COPY / MOVE --------------------------------------------------------------
    def delete(self) -> None:
        if not self._moved:  # a same-site MOVE already renamed it away
            with dav_errors():
                self.adaptor.remove(self.rel)
        self._remove_meta(recursive=False)
        self._changed(self.rel, deleted=True)

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        site, target, rel = self._dest(dest_path)
        same_site = site == self.site
        with dav_errors():
            if is_move and same_site:
                # wsgidav calls delete() on the source next: see _moved
                target.rename(self.rel, rel, overwrite=True)
                self._moved = True
            elif same_site and Capability.SERVER_COPY in target.capabilities:
                target.copy(self.rel, rel, overwrite=True)
            elif (Capability.THIRD_PARTY_COPY in target.capabilities
                  and type(target) is type(self.adaptor)):
                try:
                    target.copy_from(self.adaptor, self.rel, rel, overwrite=True)
                except errors.Unsupported:
                    stream_copy(self.adaptor, self.rel, target, rel)
            else:
                stream_copy(self.adaptor, self.rel, target, rel)
        dst_ref = "/" + dest_path.strip("/")
        if is_move:
            self.provider.store.props_move(self.get_ref_url(), dst_ref)
        else:
            self.provider.store.props_copy(self.get_ref_url(), dst_ref)
        self.provider.note_change(site, target, rel)


class RootCollection(DAVCollection):
    """``/``: one collection per site; never does I/O on the sites."""

    def __init__(self, environ: dict[str, Any], provider: FederatedProvider) -> None:
        DAVCollection.__init__(self, "/", environ)
        self.provider = provider

    def get_display_name(self) -> str:
        return self.provider.federation.config.name

    def get_member_names(self) -> list[str]:
        return list(self.provider.federation.sites)

    def get_member_list(self) -> list[Any]:
        return [self.provider.site_root(name, self.environ)
                for name in self.provider.federation.sites]

    def get_member(self, name: str) -> Any:
        return self.provider.get_resource_inst("/" + name, self.environ)

    def prevent_locking(self) -> bool:
        return True

    def create_empty_resource(self, name: str) -> Any:
        raise DAVError(HTTP_FORBIDDEN, "sites are created in the configuration, not by PUT")

    def create_collection(self, name: str) -> None:
        raise DAVError(HTTP_FORBIDDEN, "sites are created in the configuration, not by MKCOL")

    def support_recursive_delete(self) -> bool:
        return False

    def delete(self) -> None:
        raise DAVError(HTTP_FORBIDDEN, "the root cannot be deleted")

    def copy_move_single(self, dest_path: str, *, is_move: bool) -> None:
        raise DAVError(HTTP_BAD_REQUEST, "the root cannot be copied or moved")
