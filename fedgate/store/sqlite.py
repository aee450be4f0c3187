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
from collections.abc import Callable, Iterator
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
-- staging service: jobs (with their webhook delivery state), leases, catalogue --
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, user TEXT, status TEXT NOT NULL, created_at REAL NOT NULL,
  owner TEXT, lease_until REAL, wh_state TEXT, wh_next REAL, wh_lease REAL,
  doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (user, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_webhook ON jobs (wh_state, wh_next);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL,
  until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS catalogue (
  site TEXT NOT NULL, path TEXT NOT NULL, basename TEXT NOT NULL, is_dir INTEGER NOT NULL,
  size INTEGER NOT NULL, mtime REAL, checksum TEXT, seen REAL NOT NULL,
  stale INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (site, path));
CREATE INDEX IF NOT EXISTS catalogue_basename ON catalogue (basename, site, path);
CREATE INDEX IF NOT EXISTS catalogue_path ON catalogue (path);
"""


def _retry_locked(fn: Callable[[], object], deadline_s: float = 30.0) -> None:
    """Run ``fn``, retrying while another process holds the file locked.  Switching
    to WAL and creating the schema take locks that SQLite's busy handler does not
    always wait for when several processes open a new database at once."""
    end = time.monotonic() + deadline_s
    delay = 0.01
    while True:
        try:
            fn()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > end:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


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
        _retry_locked(lambda: self._conn().executescript(SCHEMA))
        self.path.chmod(0o600)

    # -- connections -------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
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

    # =====================================================================================
    # Staging service: jobs, webhook deliveries, leases, catalogue (see base.py).
    # Each method is one IMMEDIATE transaction, so several processes can share the file.
    # =====================================================================================
    _TERMINAL = ("succeeded", "failed", "cancelled")

    @staticmethod
    def _job_row(doc: dict[str, Any]) -> tuple[Any, ...]:
        wh = doc.get("webhook") or {}
        return (doc.get("user"), doc["status"], doc["created_at"], doc.get("owner"),
                doc.get("lease_until"), wh.get("state"), wh.get("next_at"),
                wh.get("lease_until"), json.dumps(doc), doc["id"])

    def _job_write(self, db: sqlite3.Connection, doc: dict[str, Any]) -> None:
        db.execute("UPDATE jobs SET user=?, status=?, created_at=?, owner=?, lease_until=?, "
                   "wh_state=?, wh_next=?, wh_lease=?, doc=? WHERE id=?", self._job_row(doc))

    @staticmethod
    def _job_read(db: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
        row = db.execute("SELECT doc FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def job_insert(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        doc = {**doc, "status": "queued", "owner": None, "lease_until": None,
               "cancel_requested": False, "claims": 0}
        with self._tx() as db:
            existing = self._job_read(db, doc["id"])
            if existing is not None:
                return existing, False
            row = self._job_row(doc)
            db.execute("INSERT INTO jobs (user, status, created_at, owner, lease_until, "
                       "wh_state, wh_next, wh_lease, doc, id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       row)
        return doc, True

    def job_get(self, job_id: str) -> dict[str, Any] | None:
        return self._job_read(self._conn(), job_id)

    def job_list(self, *, user: str | None = None, status: str | None = None,
                 limit: int = 50, before: tuple[float, str] | None = None,
                 ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if user is not None:
            where.append("user=?")
            args.append(user)
        if status is not None:
            where.append("status=?")
            args.append(status)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        sql = "SELECT doc FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(int(limit))
        return [dict(json.loads(r[0])) for r in self._conn().execute(sql, args).fetchall()]

    def job_counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {s: n for s, n in rows.fetchall()}

    def job_claim(self, owner: str, lease_s: float) -> dict[str, Any] | None:
        with self._tx() as db:
            now = time.time()  # after taking the write lock
            # two indexed lookups (an OR would scan every job ever run)
            row = db.execute("SELECT doc FROM jobs WHERE status='running' AND lease_until < ? "
                             "ORDER BY created_at LIMIT 1", (now,)).fetchone()
            if row is None:
                row = db.execute("SELECT doc FROM jobs WHERE status='queued' "
                                 "ORDER BY created_at LIMIT 1").fetchone()
            if row is None:
                return None
            doc = dict(json.loads(row[0]))
            doc.update(status="running", owner=owner, lease_until=now + lease_s,
                       claims=int(doc.get("claims") or 0) + 1)
            if not doc.get("started_at"):
                doc["started_at"] = now
            self._job_write(db, doc)
        return doc

    def job_update(self, job_id: str, owner: str, fields: dict[str, Any],
                   lease_s: float | None = None) -> dict[str, Any] | None:
        with self._tx() as db:
            doc = self._job_read(db, job_id)
            if doc is None or doc["status"] != "running" or doc.get("owner") != owner:
                return None
            doc.update(fields)
            if lease_s is not None:
                doc["lease_until"] = time.time() + lease_s
            self._job_write(db, doc)
        return doc

    def job_finish(self, job_id: str, owner: str, status: str, fields: dict[str, Any],
                   ) -> dict[str, Any] | None:
        if status not in self._TERMINAL:
            raise ValueError(f"not a terminal status: {status}")
        with self._tx() as db:
            doc = self._job_read(db, job_id)
            if doc is None or doc["status"] != "running" or doc.get("owner") != owner:
                return None
            self._terminal(doc, status, fields)
            self._job_write(db, doc)
        return doc

    @staticmethod
    def _terminal(doc: dict[str, Any], status: str, fields: dict[str, Any]) -> None:
        now = time.time()
        doc.update(fields)
        doc.update(status=status, owner=None, lease_until=None)
        doc.setdefault("finished_at", now)
        if not doc.get("finished_at"):
            doc["finished_at"] = now
        wh = doc.get("webhook")
        if wh:
            wh.update(state="pending", next_at=now, owner=None, lease_until=None)

    def job_cancel(self, job_id: str) -> dict[str, Any] | None:
        with self._tx() as db:
            doc = self._job_read(db, job_id)
            if doc is None:
                return None
            if doc["status"] == "queued":
                self._terminal(doc, "cancelled", {"error": {
                    "code": "cancelled", "message": "cancelled before it started"}})
                self._job_write(db, doc)
            elif doc["status"] == "running" and not doc.get("cancel_requested"):
                doc["cancel_requested"] = True
                self._job_write(db, doc)
        return doc

    def webhook_claim(self, owner: str, lease_s: float) -> dict[str, Any] | None:
        with self._tx() as db:
            now = time.time()
            row = db.execute(
                "SELECT doc FROM jobs WHERE wh_state='pending' AND wh_next <= ? AND "
                "(wh_lease IS NULL OR wh_lease < ?) ORDER BY wh_next LIMIT 1",
                (now, now)).fetchone()
            if row is None:
                return None
            doc = dict(json.loads(row[0]))
            doc["webhook"].update(owner=owner, lease_until=now + lease_s)
            self._job_write(db, doc)
        return doc

    def webhook_record(self, job_id: str, owner: str, delivery: dict[str, Any],
                       state: str, next_at: float | None) -> dict[str, Any] | None:
        with self._tx() as db:
            doc = self._job_read(db, job_id)
            wh = (doc or {}).get("webhook")
            if doc is None or not wh or wh.get("owner") != owner:
                return None
            wh.setdefault("deliveries", []).append(delivery)
            wh.update(state=state, next_at=next_at, owner=None, lease_until=None)
            self._job_write(db, doc)
        return doc

    # -- leases --------------------------------------------------------------------------
    def lease_acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        with self._tx() as db:
            now = time.time()
            db.execute("INSERT INTO leases (name, owner, until) VALUES (?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET owner=excluded.owner, "
                       "until=excluded.until WHERE leases.until < ? OR leases.owner = "
                       "excluded.owner", (name, owner, now + ttl_s, now))
            row = db.execute("SELECT owner FROM leases WHERE name=?", (name,)).fetchone()
        return bool(row and row[0] == owner)

    def lease_release(self, name: str, owner: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))

    # -- catalogue --------------------------------------------------------------------------
    _CAT_COLS = "site, path, basename, is_dir, size, mtime, checksum, seen, stale"

    @staticmethod
    def _cat_doc(row: tuple[Any, ...]) -> dict[str, Any]:
        site, path, basename, is_dir, size, mtime, checksum, seen, stale = row
        return {"site": site, "path": path, "basename": basename, "is_dir": bool(is_dir),
                "size": size, "mtime": mtime,
                "checksum": json.loads(checksum) if checksum else None, "seen": seen,
                "stale": bool(stale)}

    def catalogue_upsert(self, site: str, entries: list[dict[str, Any]]) -> None:
        with self._tx() as db:
            now = time.time()  # "seen" after the lock: a crawl's prune compares with it
            rows = [(site, e["path"], e["basename"], 1 if e["is_dir"] else 0,
                     int(e["size"] or 0), e.get("mtime"),
                     json.dumps(e["checksum"]) if e.get("checksum") else None, now)
                    for e in entries]
            db.executemany(f"INSERT OR REPLACE INTO catalogue ({self._CAT_COLS}) "  # noqa: S608
                           "VALUES (?,?,?,?,?,?,?,?,0)", rows)

    def catalogue_delete(self, site: str, path: str, recursive: bool = True) -> int:
        with self._tx() as db:
            n = db.execute("DELETE FROM catalogue WHERE site=? AND path=?",
                           (site, path)).rowcount
            if recursive:
                lo, hi = _below(path)
                n += db.execute("DELETE FROM catalogue WHERE site=? AND path >= ? AND "
                                "path < ?", (site, lo, hi)).rowcount
        return int(n)

    def catalogue_prune(self, site: str, seen_before: float, under: str = "/") -> int:
        with self._tx() as db:
            if under == "/":
                return int(db.execute("DELETE FROM catalogue WHERE site=? AND seen < ?",
                                      (site, seen_before)).rowcount)
            lo, hi = _below(under)
            return int(db.execute("DELETE FROM catalogue WHERE site=? AND seen < ? AND "
                                  "path >= ? AND path < ?",
                                  (site, seen_before, lo, hi)).rowcount)

    def catalogue_set_stale(self, site: str, stale: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE catalogue SET stale=? WHERE site=?", (1 if stale else 0, site))

    def catalogue_find(self, *, name: str | None = None, glob: str | None = None,
                       path: str | None = None, site: str | None = None,
                       limit: int = 1000) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if name is not None:
            where.append("basename = ?")
            args.append(name)
        if glob is not None:
            where.append("basename GLOB ?")
            args.append(glob)
            literal = _glob_prefix(glob)
            if literal and ord(literal[-1]) < 0x10FFFF:  # the basename index narrows the scan
                where.append("basename >= ? AND basename < ?")
                args += [literal, literal[:-1] + chr(ord(literal[-1]) + 1)]
        if path is not None:
            where.append("path = ?")
            args.append(path)
        if site is not None:
            where.append("site = ?")
            args.append(site)
        sql = f"SELECT {self._CAT_COLS} FROM catalogue"  # noqa: S608 - constant columns
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY site, path LIMIT ?"
        args.append(int(limit))
        return [self._cat_doc(r) for r in self._conn().execute(sql, args).fetchall()]

    def catalogue_page(self, *, site: str | None = None, prefix: str | None = None,
                       limit: int = 1000, after: tuple[str, str, str] | None = None,
                       ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if site is not None:
            where.append("site = ?")
            args.append(site)
        if prefix is not None and prefix != "/":
            lo, hi = _below(prefix)
            where.append("(path = ? OR (path >= ? AND path < ?))")
            args += [prefix.rstrip("/"), lo, hi]
        if after is not None:
            where.append("(basename, site, path) > (?, ?, ?)")
            args += list(after)
        sql = f"SELECT {self._CAT_COLS} FROM catalogue"  # noqa: S608 - constant columns
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY basename, site, path LIMIT ?"
        args.append(int(limit))
        return [self._cat_doc(r) for r in self._conn().execute(sql, args).fetchall()]

    def catalogue_count(self, site: str | None = None) -> int:
        if site is None:
            row = self._conn().execute("SELECT COUNT(*) FROM catalogue").fetchone()
        else:
            row = self._conn().execute("SELECT COUNT(*) FROM catalogue WHERE site=?",
                                       (site,)).fetchone()
        return int(row[0])


def _glob_prefix(glob: str) -> str:
    """The literal text before the first wildcard of a GLOB pattern."""
    out = []
    for ch in glob:
        if ch in "*?[":
            break
        out.append(ch)
    return "".join(out)
