"""The catalogue: where every file is, kept in the state store (SPEC 5.1).

Built by crawling every site (listings only, never file contents) at start,
refreshed every ``catalogue.refresh_interval_s`` and on ``POST /api/v1/refresh``,
and updated at once by :func:`note_change` after every change made through the
WebDAV gateway or a copy job.  A crawl upserts what it sees and then prunes
what it did not see (deleted files disappear).  A site that cannot be crawled
keeps its last known entries, marked ``stale``.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
import uuid
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from adaptors import errors
from adaptors.base import Adaptor, Entry, base_name, join
from fedgate.config import Config
from fedgate.federation import Federation
from fedgate.store.base import StateStore

log = logging.getLogger(__name__)
mimetypes.init()  # reads the system tables once, at import (not on the event loop)

BATCH = 2000


def entry_doc(path: str, e: Entry) -> dict[str, Any]:
    return {"path": path, "basename": base_name(path) or e.name, "is_dir": e.is_dir,
            "size": 0 if e.is_dir else e.size,
            "mtime": e.mtime.timestamp() if e.mtime else None,
            "checksum": dict(e.checksum) if e.checksum else None}


def note_change(store: StateStore, site: str, adaptor: Adaptor, path: str,
                deleted: bool = False) -> None:
    """Gateway hook: bring the catalogue up to date after a change at ``path``.

    Synchronous and cheap (one stat, plus one listing for a directory); never
    raises.  ``deleted=True`` removes the entry and everything below it."""
    try:
        if path == "/":
            return
        if deleted:
            store.catalogue_delete(site, path, recursive=True)
            return
        try:
            e = adaptor.stat(path)
        except errors.NotFound:
            store.catalogue_delete(site, path, recursive=True)
            return
        docs = [entry_doc(path, e)]
        if e.is_dir:
            # its direct children too (one listing); deeper levels: next crawl
            docs += [entry_doc(join(path, c.name), c) for c in adaptor.list(path)]
        store.catalogue_upsert(site, docs)
    except Exception as exc:  # a hook must never break the operation that called it
        log.warning("catalogue: note_change(%s:%s) failed: %s", site, path,
                    getattr(exc, "message", exc.__class__.__name__))


def note_tree(store: StateStore, site: str, adaptor: Adaptor, path: str,
              deleted: bool = False) -> None:
    """Like :func:`note_change`, and for a directory its whole subtree too (the
    transfer engine calls this after copying a tree).  Never raises."""
    note_change(store, site, adaptor, path, deleted)
    if deleted or path == "/":
        return
    try:
        if adaptor.stat(path).is_dir:
            crawl_site(store, site, adaptor, root=path)
    except Exception as exc:
        log.warning("catalogue: note_tree(%s:%s) failed: %s", site, path,
                    getattr(exc, "message", exc.__class__.__name__))


def crawl_site(store: StateStore, site: str, adaptor: Adaptor,
               root: str = "/") -> int:
    """List ``site`` breadth-first (listings only) into the catalogue; prune what
    was not seen.  Raises adaptor errors (the caller marks the site stale)."""
    started = time.time()
    count = 0
    batch: list[dict[str, Any]] = []
    todo = [root]
    while todo:
        path = todo.pop()
        try:
            children = adaptor.list(path)
        except (errors.NotFound, errors.NotADirectory, errors.PermissionDenied):
            if path == root:
                raise
            continue  # vanished or unreadable below the root: skip it
        for c in children:
            child = join(path, c.name)
            batch.append(entry_doc(child, c))
            if c.is_dir:
                todo.append(child)
        if len(batch) >= BATCH:
            store.catalogue_upsert(site, batch)
            count += len(batch)
            batch = []
    if batch:
        store.catalogue_upsert(site, batch)
        count += len(batch)
    store.catalogue_prune(site, started, under=root)
    return count


# -- location entries (LOBCDER format, extended) ------------------------------------------
def rfc1123(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC, datetime

    return format_datetime(datetime.fromtimestamp(ts, tz=UTC).replace(microsecond=0))


def location_entry(row: dict[str, Any], describe: dict[str, Any],
                   webdav_base: str) -> dict[str, Any]:
    path = row["path"]
    is_dir = row["is_dir"]
    mime = "httpd/unix-directory" if is_dir else (
        mimetypes.guess_type(row["basename"])[0] or "application/octet-stream")
    return {
        "filename": path, "basename": row["basename"], "lastmod": rfc1123(row["mtime"]),
        "size": row["size"], "type": "directory" if is_dir else "file", "mime": mime,
        "site": row["site"], "path": f"{row['site']}:{path}",
        "url": f"{webdav_base}/{quote(row['site'])}{quote(path)}",
        "checksum": row.get("checksum"), "stale": bool(row.get("stale")),
        "location": {"name": row["site"], "host": describe.get("host"),
                     "port": describe.get("port"), "type": describe.get("type"),
                     "mount": describe.get("mount")},
    }


class Catalogue:
    """Async façade: crawls (one process per site at a time, by lease) and queries."""

    def __init__(self, config: Config, store: StateStore, federation: Federation) -> None:
        self.config = config
        self.store = store
        self.federation = federation
        self.owner = f"crawler-{uuid.uuid4().hex[:12]}"
        self.describe = {name: a.describe() for name, a in federation.sites.items()}
        host, port = config.listen.webdav
        scheme = "https" if config.listen.tls_cert else "http"
        self.webdav_base = f"{scheme}://{host}:{port}"
        self.last_crawl: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    def entry(self, row: dict[str, Any]) -> dict[str, Any]:
        return location_entry(row, self.describe.get(row["site"], {}), self.webdav_base)

    def note(self, site: str, adaptor: Adaptor, path: str, deleted: bool = False) -> None:
        note_change(self.store, site, adaptor, path, deleted)

    async def crawl_all(self, force: bool = True) -> dict[str, Any]:
        async with self._lock:
            results = await asyncio.gather(*(self.crawl(s, force)
                                             for s in self.federation.sites))
        return dict(zip(self.federation.sites, results, strict=True))

    async def crawl(self, site: str, force: bool = True) -> dict[str, Any]:
        """Crawl ``site`` unless another process is at it (or, without ``force``,
        crawled it less than a refresh interval ago)."""
        adaptor = self.federation.get(site)
        if not force:
            rec = await asyncio.to_thread(self.store.get_record, "catalogue-crawl", site)
            if rec and time.time() - float(rec.get("at", 0)) < 0.9 * self.interval:
                return {"status": "skipped", "reason": "crawled recently"}
        lease = f"crawl:{site}"
        got = await asyncio.to_thread(self.store.lease_acquire, lease, self.owner, 3600)
        if not got:
            return {"status": "skipped", "reason": "another process is crawling"}
        t0 = time.monotonic()
        try:
            n = await asyncio.to_thread(crawl_site, self.store, site, adaptor)
            result: dict[str, Any] = {"status": "ok", "entries": n}
            self.federation.mark(site, True, "ok")
        except errors.AdaptorError as exc:
            log.warning("catalogue: crawl of %s failed: %s (entries kept, stale)", site,
                        exc.message)
            await asyncio.to_thread(self.store.catalogue_set_stale, site, True)
            self.federation.mark(site, False, exc.message)
            result = {"status": "stale", "error": exc.message}
        except Exception as exc:
            log.exception("catalogue: crawl of %s crashed", site)
            await asyncio.to_thread(self.store.catalogue_set_stale, site, True)
            result = {"status": "stale", "error": exc.__class__.__name__}
        finally:
            await asyncio.to_thread(self.store.lease_release, lease, self.owner)
        result["seconds"] = round(time.monotonic() - t0, 3)
        result["at"] = time.time()
        self.last_crawl[site] = result
        await asyncio.to_thread(self.store.put_record, "catalogue-crawl", site, result)
        return result

    @property
    def interval(self) -> float:
        return float(max(1, int(self.config.catalogue_refresh_s)))

    async def refresh_loop(self) -> None:
        """Crawl every site at start, then every refresh interval (a site another
        process crawled within the interval is skipped)."""
        force = True
        while True:
            try:
                await self.crawl_all(force)
            except Exception:
                log.exception("catalogue: refresh failed")
            force = False
            await asyncio.sleep(self.interval)
