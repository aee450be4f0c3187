"""MongoDB state store (pymongo): several gateway, staging and worker processes
on several machines share one database.

Every state change is ONE server-side atomic operation on one document
(``find_one_and_update`` with a filter that encodes the precondition, or an
upsert guarded by a unique index): no read-modify-write from Python, so two
workers can never both claim a job, finish it twice or steal a live lease.
Updates that combine stored and new values use update pipelines (MongoDB >=
4.2); every value from outside is wrapped in ``$literal`` there.  TTL indexes
remove expired locks and leases; the code never relies on them (expiry is
always checked against the clock in the filter).

Copying or moving dead properties of a subtree touches several documents and
is not transactional (a transaction needs a replica set); it copies before it
deletes, so a crash leaves duplicates, never losses.
"""

from __future__ import annotations

import fnmatch
import time
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient, ReplaceOne, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from fedgate.store.base import StateStore, decode_lock, encode_lock

_TERMINAL = ("succeeded", "failed", "cancelled")


def _below(path: str) -> dict[str, str]:
    prefix = path.rstrip("/") + "/"
    return {"$gte": prefix, "$lt": prefix[:-1] + "0"}


def _date(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _lit(value: Any) -> dict[str, Any]:
    return {"$literal": value}


def _strip(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    doc = dict(doc)
    doc.pop("_id", None)
    doc.pop("_expires_at", None)
    return doc


class MongoStore(StateStore):
    def __init__(self, url: str, timeout_ms: int = 5000) -> None:
        self.url = url.split("@")[-1] if "@" in url else url  # never keep credentials
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, appname="fedgate", tz_aware=True)
        self.db = self.client.get_default_database("fedgate")
        self.records: Collection[dict[str, Any]] = self.db["records"]
        self.locks: Collection[dict[str, Any]] = self.db["locks"]
        self.props: Collection[dict[str, Any]] = self.db["props"]
        self.jobs: Collection[dict[str, Any]] = self.db["jobs"]
        self.leases: Collection[dict[str, Any]] = self.db["leases"]
        self.catalogue: Collection[dict[str, Any]] = self.db["catalogue"]
        self._indexes()

    def _indexes(self) -> None:
        self.records.create_index([("kind", ASCENDING), ("key", ASCENDING)], unique=True)
        self.locks.create_index([("root", ASCENDING)])
        self.locks.create_index([("_expires_at", ASCENDING)], expireAfterSeconds=0)
        self.props.create_index([("path", ASCENDING), ("name", ASCENDING)], unique=True)
        self.jobs.create_index([("status", ASCENDING), ("created_at", ASCENDING)])
        self.jobs.create_index([("created_at", DESCENDING), ("_id", DESCENDING)])
        self.jobs.create_index([("user", ASCENDING), ("created_at", DESCENDING)])
        self.jobs.create_index([("webhook.state", ASCENDING), ("webhook.next_at", ASCENDING)])
        self.leases.create_index([("_expires_at", ASCENDING)], expireAfterSeconds=3600)
        self.catalogue.create_index([("site", ASCENDING), ("path", ASCENDING)], unique=True)
        self.catalogue.create_index([("basename", ASCENDING), ("site", ASCENDING),
                                     ("path", ASCENDING)])
        self.catalogue.create_index([("path", ASCENDING)])

    def close(self) -> None:
        self.client.close()

    def ping(self) -> None:
        self.client.admin.command("ping")

    # -- records ---------------------------------------------------------------------
    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        doc = self.records.find_one({"kind": kind, "key": key})
        return None if doc is None else dict(doc["value"])

    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self.records.replace_one({"kind": kind, "key": key},
                                 {"kind": kind, "key": key, "value": value}, upsert=True)

    def delete_record(self, kind: str, key: str) -> None:
        self.records.delete_one({"kind": kind, "key": key})

    # -- locks -------------------------------------------------------------------------
    def lock_put(self, token: str, root: str, expire: float, lock: dict[str, Any]) -> None:
        doc: dict[str, Any] = {"_id": token, "root": root, "expire": expire,
                               "doc": encode_lock(lock)}
        if expire >= 0:
            doc["_expires_at"] = _date(expire)
        self.locks.replace_one({"_id": token}, doc, upsert=True)

    def _live(self) -> dict[str, Any]:
        return {"$or": [{"expire": {"$lt": 0}}, {"expire": {"$gte": time.time()}}]}

    def lock_get(self, token: str) -> dict[str, Any] | None:
        doc = self.locks.find_one({"_id": token, **self._live()})
        return None if doc is None else decode_lock(doc["doc"])

    def lock_delete(self, token: str) -> bool:
        return self.locks.delete_one({"_id": token}).deleted_count > 0

    def locks_at(self, root: str, include_root: bool,
                 include_children: bool) -> list[dict[str, Any]]:
        ors: list[dict[str, Any]] = []
        if include_root:
            ors.append({"root": root})
        if include_children:
            ors.append({"root": _below(root)})
        if not ors:
            return []
        return [decode_lock(d["doc"]) for d in
                self.locks.find({"$and": [{"$or": ors}, self._live()]})]

    def locks_clear(self) -> None:
        self.locks.delete_many({})

    # -- dead properties ------------------------------------------------------------------
    def props_get(self, path: str) -> dict[str, str]:
        return {d["name"]: d["value"] for d in self.props.find({"path": path})}

    def props_tree(self, path: str, depth: int = 1) -> dict[str, dict[str, str]]:
        base = path.rstrip("/").count("/")
        out: dict[str, dict[str, str]] = {}
        for d in self.props.find({"$or": [{"path": path}, {"path": _below(path)}]}):
            if d["path"].count("/") - base <= depth:
                out.setdefault(d["path"], {})[d["name"]] = d["value"]
        return out

    def prop_set(self, path: str, name: str, value: str) -> None:
        self.props.update_one({"path": path, "name": name}, {"$set": {"value": value}},
                              upsert=True)

    def prop_remove(self, path: str, name: str) -> None:
        self.props.delete_one({"path": path, "name": name})

    def props_delete(self, path: str, recursive: bool = True) -> None:
        flt: dict[str, Any] = {"path": path}
        if recursive:
            flt = {"$or": [{"path": path}, {"path": _below(path)}]}
        self.props.delete_many(flt)

    def props_copy(self, src: str, dst: str, recursive: bool = False) -> None:
        flt: dict[str, Any] = {"$or": [{"path": src}, {"path": _below(src)}]} if recursive \
            else {"path": src}
        docs = list(self.props.find(flt))
        self.props_delete(dst, recursive=recursive)
        ops = [ReplaceOne({"path": dst + d["path"][len(src):], "name": d["name"]},
                          {"path": dst + d["path"][len(src):], "name": d["name"],
                           "value": d["value"]}, upsert=True) for d in docs]
        if ops:
            self.props.bulk_write(ops, ordered=False)

    def props_move(self, src: str, dst: str) -> None:
        self.props_copy(src, dst, recursive=True)
        self.props_delete(src, recursive=True)

    # -- jobs ----------------------------------------------------------------------------------
    def job_insert(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        doc = {**doc, "status": "queued", "owner": None, "lease_until": None,
               "cancel_requested": False, "claims": 0}
        try:
            self.jobs.insert_one({"_id": doc["id"], **doc})
        except DuplicateKeyError:
            existing = self.job_get(doc["id"])
            if existing is None:  # deleted in between: try once more
                return self.job_insert(doc)
            return existing, False
        return doc, True

    def job_get(self, job_id: str) -> dict[str, Any] | None:
        return _strip(self.jobs.find_one({"_id": job_id}))

    def job_list(self, *, user: str | None = None, status: str | None = None,
                 limit: int = 50, before: tuple[float, str] | None = None,
                 ) -> list[dict[str, Any]]:
        flt: dict[str, Any] = {}
        if user is not None:
            flt["user"] = user
        if status is not None:
            flt["status"] = status
        if before is not None:
            flt["$or"] = [{"created_at": {"$lt": before[0]}},
                          {"created_at": before[0], "_id": {"$lt": before[1]}}]
        cur = self.jobs.find(flt).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        return [d for d in (_strip(x) for x in cur.limit(int(limit))) if d is not None]

    def job_counts(self) -> dict[str, int]:
        return {d["_id"]: int(d["n"]) for d in self.jobs.aggregate(
            [{"$group": {"_id": "$status", "n": {"$sum": 1}}}])}

    def job_claim(self, owner: str, lease_s: float) -> dict[str, Any] | None:
        now = time.time()
        doc = self.jobs.find_one_and_update(
            {"$or": [{"status": "queued"}, {"status": "running", "lease_until": {"$lt": now}}]},
            [{"$set": {"status": "running", "owner": _lit(owner),
                       "lease_until": _lit(now + lease_s),
                       "claims": {"$add": [{"$ifNull": ["$claims", 0]}, 1]},
                       "started_at": {"$ifNull": ["$started_at", _lit(now)]}}}],
            sort=[("created_at", ASCENDING)], return_document=ReturnDocument.AFTER)
        return _strip(doc)

    def job_update(self, job_id: str, owner: str, fields: dict[str, Any],
                   lease_s: float | None = None) -> dict[str, Any] | None:
        values = dict(fields)
        if lease_s is not None:
            values["lease_until"] = time.time() + lease_s
        doc = self.jobs.find_one_and_update(
            {"_id": job_id, "status": "running", "owner": owner}, {"$set": values},
            return_document=ReturnDocument.AFTER)
        return _strip(doc)

    @staticmethod
    def _terminal_pipeline(status: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.time()
        values: dict[str, Any] = {k: _lit(v) for k, v in fields.items()}
        values.update(status=_lit(status), owner=None, lease_until=None,
                      finished_at={"$ifNull": ["$finished_at", _lit(now)]})
        if fields.get("finished_at"):
            values["finished_at"] = _lit(fields["finished_at"])
        return [{"$set": values},
                {"$set": {"webhook": {"$cond": [
                    {"$eq": [{"$type": "$webhook"}, "object"]},
                    {"$mergeObjects": ["$webhook", {"state": "pending", "next_at": _lit(now),
                                                    "owner": None, "lease_until": None}]},
                    "$webhook"]}}}]

    def job_finish(self, job_id: str, owner: str, status: str, fields: dict[str, Any],
                   ) -> dict[str, Any] | None:
        if status not in _TERMINAL:
            raise ValueError(f"not a terminal status: {status}")
        doc = self.jobs.find_one_and_update(
            {"_id": job_id, "status": "running", "owner": owner},
            self._terminal_pipeline(status, fields), return_document=ReturnDocument.AFTER)
        return _strip(doc)

    def job_cancel(self, job_id: str) -> dict[str, Any] | None:
        doc = self.jobs.find_one_and_update(
            {"_id": job_id, "status": "queued"},
            self._terminal_pipeline("cancelled", {"error": {
                "code": "cancelled", "message": "cancelled before it started"}}),
            return_document=ReturnDocument.AFTER)
        if doc is None:
            doc = self.jobs.find_one_and_update(
                {"_id": job_id, "status": "running", "cancel_requested": {"$ne": True}},
                {"$set": {"cancel_requested": True}}, return_document=ReturnDocument.AFTER)
        if doc is None:
            return self.job_get(job_id)
        return _strip(doc)

    # -- webhook deliveries ----------------------------------------------------------------
    def webhook_claim(self, owner: str, lease_s: float) -> dict[str, Any] | None:
        now = time.time()
        doc = self.jobs.find_one_and_update(
            {"webhook.state": "pending", "webhook.next_at": {"$lte": now},
             "$or": [{"webhook.lease_until": None}, {"webhook.lease_until": {"$lt": now}}]},
            {"$set": {"webhook.owner": owner, "webhook.lease_until": now + lease_s}},
            sort=[("webhook.next_at", ASCENDING)], return_document=ReturnDocument.AFTER)
        return _strip(doc)

    def webhook_record(self, job_id: str, owner: str, delivery: dict[str, Any],
                       state: str, next_at: float | None) -> dict[str, Any] | None:
        doc = self.jobs.find_one_and_update(
            {"_id": job_id, "webhook.owner": owner},
            {"$push": {"webhook.deliveries": delivery},
             "$set": {"webhook.state": state, "webhook.next_at": next_at,
                      "webhook.owner": None, "webhook.lease_until": None}},
            return_document=ReturnDocument.AFTER)
        return _strip(doc)

    # -- leases ----------------------------------------------------------------------------
    def lease_acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.time()
        try:
            self.leases.find_one_and_update(
                {"_id": name, "$or": [{"until": {"$lt": now}}, {"owner": owner}]},
                {"$set": {"owner": owner, "until": now + ttl_s,
                          "_expires_at": _date(now + ttl_s)}}, upsert=True)
        except DuplicateKeyError:
            return False  # held by someone else and not expired
        return True

    def lease_release(self, name: str, owner: str) -> None:
        self.leases.delete_one({"_id": name, "owner": owner})

    # -- catalogue ------------------------------------------------------------------------------
    @staticmethod
    def _cat(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: doc.get(k) for k in ("site", "path", "basename", "is_dir", "size", "mtime",
                                        "checksum", "seen", "stale")}

    def catalogue_upsert(self, site: str, entries: list[dict[str, Any]]) -> None:
        now = time.time()
        ops = [ReplaceOne({"site": site, "path": e["path"]},
                          {"site": site, "path": e["path"], "basename": e["basename"],
                           "is_dir": bool(e["is_dir"]), "size": int(e["size"] or 0),
                           "mtime": e.get("mtime"), "checksum": e.get("checksum") or None,
                           "seen": now, "stale": False}, upsert=True) for e in entries]
        if ops:
            self.catalogue.bulk_write(ops, ordered=False)

    def catalogue_delete(self, site: str, path: str, recursive: bool = True) -> int:
        flt: dict[str, Any] = {"site": site, "path": path}
        if recursive:
            flt = {"site": site, "$or": [{"path": path}, {"path": _below(path)}]}
        return int(self.catalogue.delete_many(flt).deleted_count)

    def catalogue_prune(self, site: str, seen_before: float, under: str = "/") -> int:
        flt: dict[str, Any] = {"site": site, "seen": {"$lt": seen_before}}
        if under != "/":
            flt["path"] = _below(under)
        return int(self.catalogue.delete_many(flt).deleted_count)

    def catalogue_set_stale(self, site: str, stale: bool) -> None:
        self.catalogue.update_many({"site": site}, {"$set": {"stale": stale}})

    def catalogue_find(self, *, name: str | None = None, glob: str | None = None,
                       path: str | None = None, site: str | None = None,
                       limit: int = 1000) -> list[dict[str, Any]]:
        flt: dict[str, Any] = {}
        if name is not None:
            flt["basename"] = name
        if glob is not None:
            pattern = fnmatch.translate(glob)
            if name is not None:
                flt["$and"] = [{"basename": name}, {"basename": {"$regex": pattern}}]
                del flt["basename"]
            else:
                flt["basename"] = {"$regex": pattern}
        if path is not None:
            flt["path"] = path
        if site is not None:
            flt["site"] = site
        cur = self.catalogue.find(flt).sort([("site", ASCENDING), ("path", ASCENDING)])
        return [self._cat(d) for d in cur.limit(int(limit))]

    def catalogue_page(self, *, site: str | None = None, prefix: str | None = None,
                       limit: int = 1000, after: tuple[str, str, str] | None = None,
                       ) -> list[dict[str, Any]]:
        ands: list[dict[str, Any]] = []
        if site is not None:
            ands.append({"site": site})
        if prefix is not None and prefix != "/":
            ands.append({"$or": [{"path": prefix.rstrip("/")}, {"path": _below(prefix)}]})
        if after is not None:
            b, s, p = after
            ands.append({"$or": [{"basename": {"$gt": b}},
                                 {"basename": b, "site": {"$gt": s}},
                                 {"basename": b, "site": s, "path": {"$gt": p}}]})
        cur = self.catalogue.find({"$and": ands} if ands else {}).sort(
            [("basename", ASCENDING), ("site", ASCENDING), ("path", ASCENDING)])
        return [self._cat(d) for d in cur.limit(int(limit))]

    def catalogue_count(self, site: str | None = None) -> int:
        return int(self.catalogue.count_documents({} if site is None else {"site": site}))


__all__ = ["MongoStore", "PyMongoError"]
