"""wsgidav lock storage and property manager backed by the fedgate state store,
so locks and dead properties survive restarts and are shared by processes."""

from __future__ import annotations

import time
from typing import Any

from wsgidav.lock_man.lock_manager import generate_lock_token, normalize_lock_root, validate_lock

from fedgate.store.base import StateStore

LOCK_TIMEOUT_DEFAULT = 604800.0
LOCK_TIMEOUT_MAX = 4 * 604800.0


class StoreLockStorage:
    """Implements wsgidav's LockStorage interface over :class:`StateStore`."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"StoreLockStorage({self.store.url})"

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def clear(self) -> None:
        self.store.locks_clear()

    def get(self, token: str) -> dict[str, Any] | None:
        return self.store.lock_get(token)

    def create(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        assert lock.get("token") is None
        root = normalize_lock_root(path)
        lock["root"] = root
        raw = lock.get("timeout")
        timeout = LOCK_TIMEOUT_DEFAULT if raw is None else float(raw)
        if timeout < 0 or timeout > LOCK_TIMEOUT_MAX:
            timeout = LOCK_TIMEOUT_MAX
        lock["timeout"] = timeout
        lock["expire"] = time.time() + timeout
        validate_lock(lock)
        lock["token"] = generate_lock_token()
        self.store.lock_put(lock["token"], root, lock["expire"], lock)
        return lock

    def refresh(self, token: str, *, timeout: float) -> dict[str, Any]:
        lock = self.store.lock_get(token)
        if lock is None:
            raise ValueError("lock token is invalid")
        if timeout < 0 or timeout > LOCK_TIMEOUT_MAX:
            timeout = LOCK_TIMEOUT_MAX
        lock["timeout"] = timeout
        lock["expire"] = time.time() + timeout
        self.store.lock_put(token, lock["root"], lock["expire"], lock)
        return lock

    def delete(self, token: str) -> bool:
        return self.store.lock_delete(token)

    def get_lock_list(self, path: str, *, include_root: bool, include_children: bool,
                      token_only: bool) -> list[Any]:
        locks = self.store.locks_at(normalize_lock_root(path), include_root, include_children)
        return [lk["token"] for lk in locks] if token_only else locks


class StorePropertyManager:
    """Implements wsgidav's PropertyManager interface over :class:`StateStore`.

    Values are the XML strings wsgidav hands over.  ``prefetch`` lets a PROPFIND
    load the properties of a whole directory in one query (see provider).
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"StorePropertyManager({self.store.url})"

    @staticmethod
    def _key(url: str) -> str:
        return "/" + url.strip("/")

    def get_properties(self, norm_url: str, environ: dict[str, Any] | None = None) -> list[str]:
        return list(self._props(norm_url, environ))

    def _props(self, norm_url: str, environ: dict[str, Any] | None) -> dict[str, str]:
        key = self._key(norm_url)
        cache = environ.get("fedgate.props") if environ else None
        if cache is not None and key in cache:
            return dict(cache[key])
        return self.store.props_get(key)

    def get_property(self, norm_url: str, name: str,
                     environ: dict[str, Any] | None = None) -> Any:
        return self._props(norm_url, environ).get(name)

    def write_property(self, norm_url: str, name: str, property_value: Any, dry_run: bool = False,
                       environ: dict[str, Any] | None = None) -> None:
        if dry_run:
            return
        value = property_value.decode() if isinstance(property_value, bytes) else property_value
        self.store.prop_set(self._key(norm_url), name, value)

    def remove_property(self, norm_url: str, name: str, dry_run: bool = False,
                        environ: dict[str, Any] | None = None) -> None:
        if not dry_run:
            self.store.prop_remove(self._key(norm_url), name)

    def remove_properties(self, norm_url: str, environ: dict[str, Any] | None = None) -> None:
        self.store.props_delete(self._key(norm_url), recursive=False)

    def copy_properties(self, src_url: str, dest_url: str,
                        environ: dict[str, Any] | None = None) -> None:
        self.store.props_copy(self._key(src_url), self._key(dest_url), recursive=False)

    def move_properties(self, src_url: str, dest_url: str, with_children: bool,
                        environ: dict[str, Any] | None = None) -> None:
        if with_children:
            self.store.props_move(self._key(src_url), self._key(dest_url))
        else:
            self.store.props_copy(self._key(src_url), self._key(dest_url), recursive=False)
            self.store.props_delete(self._key(src_url), recursive=False)
