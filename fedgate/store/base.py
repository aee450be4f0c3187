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
