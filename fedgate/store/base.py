"""The state store interface (SPEC section 6).

One interface, two implementations: SQLite (one machine, default) and MongoDB
(several processes on several machines).  Both pass the one conformance suite
in tests/store/.  Everything that must survive a restart lives here: WebDAV
locks, dead properties, key records, jobs, webhook deliveries, the catalogue.

Implementations MUST be safe to call from many threads and from several
processes at once, and every state change MUST be atomic (no
read-modify-write races between processes).
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from typing import Any


def encode_lock(lock: dict[str, Any]) -> dict[str, Any]:
    """A wsgidav lock dict -> JSON-safe dict (bytes as ``{"$b": base64}``)."""
    return {k: ({"$b": base64.b64encode(v).decode()} if isinstance(v, bytes) else v)
            for k, v in lock.items()}


def decode_lock(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (base64.b64decode(v["$b"]) if isinstance(v, dict) and "$b" in v else v)
            for k, v in doc.items()}


class StateStore(ABC):
    """Durable shared state.  Paths are namespace paths (``/site/a/b``)."""

    url: str

    # -- lifecycle -------------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise if the store is not usable (for /readyz)."""

    # -- records (small durable key/value documents) -------------------------------
    @abstractmethod
    def get_record(self, kind: str, key: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None: ...

    @abstractmethod
    def delete_record(self, kind: str, key: str) -> None: ...

    # -- WebDAV locks ---------------------------------------------------------------
    @abstractmethod
    def lock_put(self, token: str, root: str, expire: float, lock: dict[str, Any]) -> None:
        """Insert or replace a lock (``expire`` < 0: never)."""

    @abstractmethod
    def lock_get(self, token: str) -> dict[str, Any] | None:
        """The lock, or None when missing or expired (expired ones are purged)."""

    @abstractmethod
    def lock_delete(self, token: str) -> bool: ...

    @abstractmethod
    def locks_at(self, root: str, include_root: bool,
                 include_children: bool) -> list[dict[str, Any]]:
        """Unexpired locks whose root is ``root`` and/or lies below it."""

    @abstractmethod
    def locks_clear(self) -> None: ...

    # -- dead properties -------------------------------------------------------------
    @abstractmethod
    def props_get(self, path: str) -> dict[str, str]:
        """All dead properties of a resource: ``{"{ns}name": xml_string}``."""

    @abstractmethod
    def props_tree(self, path: str, depth: int = 1) -> dict[str, dict[str, str]]:
        """Dead properties of ``path`` and its descendants down to ``depth`` levels,
        in one query: ``{path: {name: value}}`` (paths without properties absent)."""

    @abstractmethod
    def prop_set(self, path: str, name: str, value: str) -> None: ...

    @abstractmethod
    def prop_remove(self, path: str, name: str) -> None: ...

    @abstractmethod
    def props_delete(self, path: str, recursive: bool = True) -> None:
        """Remove the properties of ``path`` (and with ``recursive`` of its subtree)."""

    @abstractmethod
    def props_copy(self, src: str, dst: str, recursive: bool = False) -> None:
        """Copy properties of ``src`` (and its subtree) to ``dst``, replacing."""

    @abstractmethod
    def props_move(self, src: str, dst: str) -> None:
        """Move the properties of ``src`` and its whole subtree under ``dst``."""

    # =====================================================================================
    # Staging service (staging/): jobs, webhook deliveries, catalogue, leases.
    #
    # Every method below is ONE atomic operation on ONE document (or one set-wise
    # delete), so that a MongoDB store can implement each with a single
    # ``insert_one`` / ``find_one_and_update`` / ``delete_many``: no caller ever
    # reads a document, changes it in Python and writes it back across processes.
    # Times are POSIX seconds (float).  Job documents are JSON-safe dicts; the
    # store owns these top-level keys: ``id``, ``user``, ``status``,
    # ``created_at``, ``body_hash``, ``owner``, ``lease_until``,
    # ``cancel_requested``, ``claims``, ``webhook`` (with ``state``, ``next_at``,
    # ``owner``, ``lease_until``, ``deliveries``); everything else is opaque.
    # =====================================================================================

    # -- jobs ---------------------------------------------------------------------------
    def job_insert(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert ``doc`` (status ``queued``) unless a job with its ``id`` exists.

        Returns ``(stored_doc, created)``; when not created, ``stored_doc`` is
        the existing job (the caller compares ``body_hash`` for idempotency).
        Mongo: ``insert_one`` + on DuplicateKeyError ``find_one``."""
        raise NotImplementedError

    def job_get(self, job_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def job_list(self, *, user: str | None = None, status: str | None = None,
                 limit: int = 50, before: tuple[float, str] | None = None,
                 ) -> list[dict[str, Any]]:
        """Jobs newest first (``created_at`` desc, ``id`` desc), strictly after the
        keyset cursor ``before = (created_at, id)`` in that order."""
        raise NotImplementedError

    def job_counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        raise NotImplementedError

    def job_claim(self, owner: str, lease_s: float) -> dict[str, Any] | None:
        """Atomically take the oldest job that is ``queued``, or ``running`` with an
        expired lease (its worker died): set status ``running``, ``owner``,
        ``lease_until = now + lease_s``, ``started_at`` if unset, ``claims += 1``.
        Returns the updated doc, or None.  Mongo: one ``find_one_and_update``
        sorted by ``created_at``."""
        raise NotImplementedError

    def job_update(self, job_id: str, owner: str, fields: dict[str, Any],
                   lease_s: float | None = None) -> dict[str, Any] | None:
        """Set top-level ``fields`` (and renew the lease when ``lease_s``) only if the
        job is ``running`` and owned by ``owner``.  Returns the updated doc (the
        caller reads ``cancel_requested`` from it) or None when the lease was lost.
        Mongo: ``find_one_and_update({_id, status: "running", owner}, {$set},
        return_document=AFTER)``."""
        raise NotImplementedError

    def job_finish(self, job_id: str, owner: str, status: str, fields: dict[str, Any],
                   ) -> dict[str, Any] | None:
        """``running`` (owned by ``owner``) -> terminal ``status`` with ``fields``,
        clearing the lease; if the job has a webhook, its delivery becomes due now
        (``webhook.state = "pending"``, ``webhook.next_at = now``) in the same
        update.  Returns the doc, or None if the job was not ours (so a job is
        never finished twice).  Mongo: ``find_one_and_update({_id, status:
        "running", owner}, [pipeline $set with $cond on webhook])``."""
        raise NotImplementedError

    def job_cancel(self, job_id: str) -> dict[str, Any] | None:
        """``queued`` -> ``cancelled`` (webhook due); ``running`` -> sets
        ``cancel_requested`` (the owning worker stops and finishes it); terminal:
        unchanged.  Returns the doc after the change, None if there is no job.
        Mongo: ``find_one_and_update({_id, status: "queued"}, ...)``, else
        ``find_one_and_update({_id, status: "running"}, {$set: {cancel_requested:
        true}})``, else ``find_one`` (each step atomic; the order makes it safe)."""
        raise NotImplementedError

    # -- webhook deliveries (kept inside the job document) ----------------------------------
    def webhook_claim(self, owner: str, lease_s: float) -> dict[str, Any] | None:
        """Take a job whose webhook is ``pending`` with ``next_at <= now`` and no live
        delivery lease; set ``webhook.owner``/``webhook.lease_until``.  Mongo: one
        ``find_one_and_update`` sorted by ``webhook.next_at``."""
        raise NotImplementedError

    def webhook_record(self, job_id: str, owner: str, delivery: dict[str, Any],
                       state: str, next_at: float | None) -> dict[str, Any] | None:
        """Append ``delivery`` to ``webhook.deliveries`` and set ``webhook.state``
        (``pending``/``delivered``/``failed``) and ``next_at``, releasing the
        delivery lease, only if ``owner`` holds it.  Returns the doc or None.
        Mongo: ``find_one_and_update({_id, "webhook.owner": owner}, {$push, $set})``."""
        raise NotImplementedError

    # -- leases (singleton tasks such as a site crawl) -----------------------------------------
    def lease_acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the named lease if it is free, expired or already ours.
        Mongo: ``update_one({_id, $or: [{until < now}, {owner}]}, {$set},
        upsert=True)``; a DuplicateKeyError means someone else holds it."""
        raise NotImplementedError

    def lease_release(self, name: str, owner: str) -> None:
        raise NotImplementedError

    # -- catalogue -------------------------------------------------------------------------
    # Entries: {"site", "path" (site-relative), "basename", "is_dir", "size",
    # "mtime" (float|None), "checksum" (dict|None), "seen" (float), "stale" (bool)}.
    def catalogue_upsert(self, site: str, entries: list[dict[str, Any]]) -> None:
        """Insert or replace entries of ``site`` by ``path`` (``seen`` = now,
        ``stale`` = False).  Mongo: one ``bulk_write`` of upserts."""
        raise NotImplementedError

    def catalogue_delete(self, site: str, path: str, recursive: bool = True) -> int:
        """Remove the entry at ``path`` (and with ``recursive`` everything below).
        Mongo: ``delete_many`` on ``site`` and ``path`` (equal or prefix + "/")."""
        raise NotImplementedError

    def catalogue_prune(self, site: str, seen_before: float, under: str = "/") -> int:
        """Remove entries of ``site`` below ``under`` not seen since ``seen_before``
        (what a finished crawl did not find any more)."""
        raise NotImplementedError

    def catalogue_set_stale(self, site: str, stale: bool) -> None:
        raise NotImplementedError

    def catalogue_find(self, *, name: str | None = None, glob: str | None = None,
                       path: str | None = None, site: str | None = None,
                       limit: int = 1000) -> list[dict[str, Any]]:
        """Entries by exact basename, basename glob (``*``, ``?``, ``[...]``) or exact
        site-relative path, ordered by (site, path)."""
        raise NotImplementedError

    def catalogue_page(self, *, site: str | None = None, prefix: str | None = None,
                       limit: int = 1000, after: tuple[str, str, str] | None = None,
                       ) -> list[dict[str, Any]]:
        """Entries ordered by (basename, site, path), strictly after the keyset
        cursor ``after``; ``prefix`` is a site-relative path prefix."""
        raise NotImplementedError

    def catalogue_count(self, site: str | None = None) -> int:
        raise NotImplementedError
