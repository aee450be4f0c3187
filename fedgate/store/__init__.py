"""State stores.  ``open_store(url)`` is the one factory."""

from __future__ import annotations

from fedgate.store.base import StateStore


def open_store(url: str) -> StateStore:
    """``sqlite:///PATH`` or ``mongodb://...``."""
    if url.startswith("sqlite:///"):
        from fedgate.store.sqlite import SQLiteStore

        path = url[len("sqlite://"):]  # sqlite:///var/x and sqlite:////var/x: /var/x
        return SQLiteStore(path[1:] if path.startswith("//") else path)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from fedgate.store.mongo import MongoStore

        store: StateStore = MongoStore(url)
        return store
    raise ValueError("state must be sqlite:///PATH or mongodb://...")
