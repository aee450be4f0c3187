"""SQLite state store: one file, WAL mode, shared safely by several processes.

Each thread has its own connection; every change is one transaction
(``BEGIN IMMEDIATE`` where a read decides a write), so several gateway and
worker processes on one machine can share the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedgate.store.base import StateStore, decode_lock, encode_lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS locks (
  token TEXT PRIMARY KEY, root TEXT NOT NULL, expire REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS locks_root ON locks (root);
CREATE TABLE IF NOT EXISTS props (
  path TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (path, name));
"""


def _below(path: str) -> tuple[str, str]:
    """Range bounds selecting strict descendants of ``path`` by prefix."""
    prefix = path.rstrip("/") + "/"
    return prefix, prefix[:-1] + "0"  # '0' sorts right after '/'


class SQLiteStore(StateStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._conn().executescript(SCHEMA)
        self.path.chmod(0o600)

    # -- connections -------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for c in self._all:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    # -- records ------------------------------------------------------------------
    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT value FROM records WHERE kind=? AND key=?",
                                   (kind, key)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO records (kind, key, value) VALUES (?,?,?)",
                       (kind, key, json.dumps(value)))

    def delete_record(self, kind: str, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM records WHERE kind=? AND key=?", (kind, key))

    # -- locks ----------------------------------------------------------------------
    def lock_put(self, token: str, root: str, expire: float, lock: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO locks (token, root, expire, doc) "
                       "VALUES (?,?,?,?)", (token, root, expire, json.dumps(encode_lock(lock))))

    def _purge(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM locks WHERE expire >= 0 AND expire < ?", (time.time(),))

    def lock_get(self, token: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT expire, doc FROM locks WHERE token=?",
                                   (token,)).fetchone()
        if row is None:
            return None
        if 0 <= row[0] < time.time():
            self.lock_delete(token)
            return None
        return decode_lock(json.loads(row[1]))

    def lock_delete(self, token: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM locks WHERE token=?", (token,)).rowcount > 0

    def locks_at(self, root: str, include_root: bool,
                 include_children: bool) -> list[dict[str, Any]]:
        now = time.time()
        db = self._conn()
        rows: list[Any] = []
        if include_root:
            rows += db.execute("SELECT doc FROM locks WHERE root=? AND (expire < 0 OR "
                               "expire >= ?)", (root, now)).fetchall()
        if include_children:
            lo, hi = _below(root)
            rows += db.execute("SELECT doc FROM locks WHERE root >= ? AND root < ? AND "
                               "(expire < 0 OR expire >= ?)", (lo, hi, now)).fetchall()
        return [decode_lock(json.loads(r[0])) for r in rows]

    def locks_clear(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM locks")

    # -- dead properties -----------------------------------------------------------------
    def props_get(self, path: str) -> dict[str, str]:
        rows = self._conn().execute("SELECT name, value FROM props WHERE path=?",
                                    (path,)).fetchall()
        return {n: v for n, v in rows}

    def props_tree(self, path: str, depth: int = 1) -> dict[str, dict[str, str]]:
        lo, hi = _below(path)
        rows = self._conn().execute(
            "SELECT path, name, value FROM props WHERE path = ? OR (path >= ? AND path < ?)",
            (path, lo, hi)).fetchall()
        base = path.rstrip("/").count("/")
        out: dict[str, dict[str, str]] = {}
        for p, n, v in rows:
            if p.count("/") - base <= depth:
                out.setdefault(p, {})[n] = v
        return out

    def prop_set(self, path: str, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO props (path, name, value) VALUES (?,?,?)",
                       (path, name, value))

    def prop_remove(self, path: str, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM props WHERE path=? AND name=?", (path, name))

    def props_delete(self, path: str, recursive: bool = True) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM props WHERE path=?", (path,))
            if recursive:
                lo, hi = _below(path)
                db.execute("DELETE FROM props WHERE path >= ? AND path < ?", (lo, hi))

    def props_copy(self, src: str, dst: str, recursive: bool = False) -> None:
        with self._tx() as db:
            self._copy(db, src, dst, recursive)

    def _copy(self, db: sqlite3.Connection, src: str, dst: str, recursive: bool) -> None:
        rows = db.execute("SELECT path, name, value FROM props WHERE path=?", (src,)).fetchall()
        if recursive:
            lo, hi = _below(src)
            rows += db.execute("SELECT path, name, value FROM props WHERE path >= ? AND "
                               "path < ?", (lo, hi)).fetchall()
        db.execute("DELETE FROM props WHERE path=?", (dst,))
        if recursive:
            lo, hi = _below(dst)
            db.execute("DELETE FROM props WHERE path >= ? AND path < ?", (lo, hi))
        db.executemany("INSERT OR REPLACE INTO props (path, name, value) VALUES (?,?,?)",
                       [(dst + p[len(src):], n, v) for p, n, v in rows])

    def props_move(self, src: str, dst: str) -> None:
        with self._tx() as db:
            self._copy(db, src, dst, True)
            db.execute("DELETE FROM props WHERE path=?", (src,))
            lo, hi = _below(src)
            db.execute("DELETE FROM props WHERE path >= ? AND path < ?", (lo, hi))
