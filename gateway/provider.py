"""FederatedProvider: one wsgidav provider over the whole mount table."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from wsgidav.dav_error import DAVError
from wsgidav.dav_provider import DAVProvider
from wsgidav.util import get_rfc1123_time, parse_time_string

from adaptors import errors
from adaptors.base import BLOCK_SIZE, Adaptor, Entry
from fedgate import namespace
from fedgate.federation import Federation
from fedgate.store.base import StateStore
from gateway import propfind
from gateway.errors import to_dav_error
from gateway.resources import FileResource, RootCollection, SiteCollection

log = logging.getLogger(__name__)

ChangeHook = Callable[[StateStore, str, Adaptor, str, bool], None]


class FederatedProvider(DAVProvider):
    def __init__(self, federation: Federation, on_change: Iterable[ChangeHook] = ()) -> None:
        super().__init__()
        self.federation = federation
        self.store = federation.store
        self.on_change = list(on_change)

    def is_readonly(self) -> bool:
        return False

    # -- request hook: 1 MiB blocks, no Depth: infinity ---------------------------------
    def custom_request_handler(self, environ: dict[str, Any], start_response: Any,
                               default_handler: Any) -> Any:
        server = getattr(default_handler, "__self__", None)
        if server is not None:
            server.block_size = BLOCK_SIZE
            server.allow_propfind_infinite = False
        if environ.get("REQUEST_METHOD") == "PROPFIND":
            fast = propfind.handle(self, environ, start_response)
            if fast is not None:
                return fast
        if (environ.get("REQUEST_METHOD") in ("GET", "HEAD")
                and "HTTP_IF_MODIFIED_SINCE" in environ and "HTTP_IF_NONE_MATCH" not in environ):
            not_modified = self._not_modified(environ, start_response)
            if not_modified is not None:
                return not_modified
        return default_handler(environ, start_response)

    def _not_modified(self, environ: dict[str, Any], start_response: Any) -> list[bytes] | None:
        """RFC 9110 13.1.3: 304 when Last-Modified <= If-Modified-Since (wsgidav
        only answers 304 when strictly earlier)."""
        ims = parse_time_string(environ["HTTP_IF_MODIFIED_SINCE"])
        if ims is None:
            return None
        res = self.get_resource_inst(environ["PATH_INFO"], environ)
        if res is None or res.is_collection:
            return None
        last = res.get_last_modified()
        if last is None or last > ims:
            return None
        start_response("304 Not Modified", [("ETag", f'"{res.get_etag()}"'),
                                            ("Last-Modified", get_rfc1123_time(last))])
        return [b""]

    # -- resolving ------------------------------------------------------------------------
    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Any:
        try:
            norm = namespace.normalize(path or "/")
        except namespace.PathError as exc:
            raise to_dav_error(exc) from exc
        site, rel = namespace.split(norm)
        if site is None:
            return RootCollection(environ, self)
        adaptor = self.federation.sites.get(site)
        if adaptor is None:
            return None
        if rel == "/":
            return self.site_root(site, environ)
        try:
            entry = adaptor.stat(rel)
        except (errors.NotFound, errors.NotADirectory):
            return None
        except errors.Unavailable as exc:
            self.federation.mark(site, False, exc.message)
            raise to_dav_error(exc) from exc
        except errors.AdaptorError as exc:
            raise to_dav_error(exc) from exc
        return self.resource_for(site, adaptor, norm, rel, entry, environ)

    def site_root(self, site: str, environ: dict[str, Any]) -> SiteCollection:
        adaptor = self.federation.sites[site]
        status = self.federation.last_status(site)
        down = None if status is None or status.ok else status.message
        return SiteCollection(f"/{site}", environ, self, site, adaptor, "/", Entry("", True),
                              down=down)

    def resource_for(self, site: str, adaptor: Adaptor, path: str, rel: str, entry: Entry,
                     environ: dict[str, Any]) -> Any:
        if entry.is_dir:
            return SiteCollection(path, environ, self, site, adaptor, rel, entry)
        return FileResource(path, environ, self, site, adaptor, rel, entry)

    # -- helpers for resources ---------------------------------------------------------------
    def prefetch_props(self, path: str, names: Iterable[str], environ: dict[str, Any]) -> None:
        """Load the dead properties of a directory and its children in one query."""
        key = "/" + path.strip("/")
        found = self.store.props_tree(key, depth=1)
        cache = environ.setdefault("fedgate.props", {})
        cache[key] = found.get(key, {})
        for name in names:
            child = key.rstrip("/") + "/" + name
            cache[child] = found.get(child, {})

    def note_change(self, site: str, adaptor: Adaptor, rel: str, deleted: bool = False) -> None:
        for hook in self.on_change:
            try:
                hook(self.store, site, adaptor, rel, deleted)
            except Exception:  # the catalogue must never fail a WebDAV request
                log.exception("change hook failed for %s:%s", site, rel)


__all__ = ["DAVError", "FederatedProvider"]
