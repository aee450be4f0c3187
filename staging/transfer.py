"""The transfer engine: runs ONE claimed copy job to its end (synchronously, in a
worker thread).

- Streams with :func:`adaptors.base.stream_copy` (bounded memory; the target is
  a staged write, committed only when every byte arrived) while a
  :class:`ThreadedHashingSink` hashes the bytes on another core.
- Uses the server-side path when it can: ``Capability.SERVER_COPY`` within one
  site, ``Capability.THIRD_PARTY_COPY`` between two sites of one type, and an
  atomic rename for a move within a site.  A third-party copy that verified
  the job's checksum on both servers itself is not checksummed again.
- Verifies every file before it counts as done; a mismatch removes the bad
  target and is retried.  Streamed copies: the job's checksum (sha256 by
  default) is computed on the bytes sent; the target is then compared with
  the server's own checksum when the back end offers one
  (``Capability.CHECKSUM``), else read back (ranges in parallel) and compared
  with a CRC-32 of every 1 MiB block kept on the way, so a verification costs
  a fraction of a second per GiB, not a second full hash.  (A server that
  offers checksums but gives none has the target read and hashed whole.)
  Server-side copies: both ends are checksummed (server-side or read, in
  parallel).
- Retries transient faults (``Transient``, ``Unavailable``, checksum
  mismatches) with exponential backoff, up to ``transfers.retries`` times.
- Stops within one block when cancelled (or when the lease is lost) and
  removes what it wrote: the staged writer is aborted, files it committed and a
  target tree it created are removed.
- A tree copy records the last finished file (``resume_after``) after every
  file, so a job restarted after a crash resumes after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from adaptors import errors
from adaptors.base import (
    BLOCK_SIZE,
    Adaptor,
    Capability,
    HashingSink,
    iter_chunks,
    join,
    stream_copy,
)
from fedgate.config import Config
from fedgate.federation import Federation
from fedgate.namespace import parse_site_path
from fedgate.store.base import StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE: tuple[type[errors.AdaptorError], ...] = (
    errors.Transient, errors.Unavailable, errors.ChecksumMismatch)


#: threads reading a target back to verify it
VERIFY_THREADS = max(2, min(4, os.cpu_count() or 2))


def retry_base_seconds() -> float:
    """First retry delay (doubles each time); tests shorten it by environment."""
    return float(os.environ.get("FEDGATE_TRANSFER_BACKOFF_S", "1.0"))


class Cancelled(Exception):
    """The job was cancelled (raised inside the copy to stop it)."""


class LeaseLost(Exception):
    """Another worker owns the job now; stop without finishing it."""


class JobFailure(Exception):
    """A failure that is the request's fault or final (not retried)."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class BlockCRC:
    """CRC-32 of every ``block``-sized block of a stream, whatever its chunking."""

    def __init__(self, block: int = BLOCK_SIZE) -> None:
        self.block = block
        self.crcs: list[int] = []
        self._crc = 0
        self._fill = 0

    def update(self, data: bytes) -> None:
        mv = memoryview(data)
        while len(mv):
            take = min(len(mv), self.block - self._fill)
            self._crc = zlib.crc32(mv[:take], self._crc)  # releases the GIL
            self._fill += take
            mv = mv[take:]
            if self._fill == self.block:
                self.crcs.append(self._crc)
                self._crc, self._fill = 0, 0

    def finish(self) -> list[int]:
        if self._fill:
            self.crcs.append(self._crc)
            self._crc, self._fill = 0, 0
        return self.crcs


class _Consumer:
    """Feeds chunks to ``fn`` on its own thread (a bounded queue keeps memory small)."""

    def __init__(self, fn: Callable[[bytes], None], name: str) -> None:
        self.fn = fn
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.q.get()) is not None:
            self.fn(data)


class ThreadedHashingSink(HashingSink):
    """A :class:`HashingSink` whose hashing runs on helper threads (hashlib and zlib
    release the GIL), overlapping with reading and writing.  Besides the whole-
    stream digests it keeps a CRC-32 per 1 MiB block (``block_crcs``), which lets
    the target be verified block by block, in parallel."""

    def __init__(self, algorithms: Iterable[str] = ("sha256",), blocks: bool = True) -> None:
        super().__init__(algorithms)
        self.blocks: BlockCRC | None = BlockCRC() if blocks else None
        self._consumers = [_Consumer(h.update, f"hash-{a}") for a, h in self.hashers.items()]
        if self.blocks is not None:
            self._consumers.append(_Consumer(self.blocks.update, "hash-crc"))
        self._closed = False

    def update(self, data: bytes) -> None:
        self.bytes += len(data)
        for c in self._consumers:
            c.q.put(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for c in self._consumers:
                c.q.put(None)
            for c in self._consumers:
                c.thread.join()

    def hexdigests(self) -> dict[str, str]:
        self.close()
        return super().hexdigests()

    def block_crcs(self) -> list[int] | None:
        """The CRC-32 of every block, or None when the sink was made without them."""
        self.close()
        return self.blocks.finish() if self.blocks is not None else None


class JobControl:
    """Shared between a running job's thread and its async heartbeat: progress
    counters, the cancel flag and synchronous persistence of resume points."""

    def __init__(self, job: dict[str, Any], owner: str, store: StateStore,
                 lease_s: float) -> None:
        self.job_id = job["id"]
        self.owner = owner
        self.store = store
        self.lease_s = lease_s
        self.stop = threading.Event()
        self.stop_reason = "cancelled"
        # counters are written only by the copy thread and read by the heartbeat
        self.bytes_done = 0
        self.bytes_total: int | None = job.get("bytes_total")
        self.files_done = 0
        self.files_total: int | None = job.get("files_total")
        self.attempts = int(job.get("attempts") or 0)
        self.started = time.monotonic()
        self.active_s = 0.0

    # -- called from the copy thread -------------------------------------------------
    def check(self) -> None:
        if self.stop.is_set():
            raise LeaseLost() if self.stop_reason == "lease_lost" else Cancelled()

    def add_bytes(self, n: int) -> None:
        self.bytes_done += n
        self.check()

    def persist(self, fields: dict[str, Any]) -> None:
        """Write ``fields`` plus progress now (resume points); stop if told to."""
        doc = self.store.job_update(self.job_id, self.owner, {**self.progress(), **fields},
                                    self.lease_s)
        self.observe(doc)
        self.check()

    def sleep(self, seconds: float) -> None:
        """Back off, waking at once when cancelled."""
        self.stop.wait(seconds)
        self.check()

    # -- called from either side ----------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    def observe(self, doc: dict[str, Any] | None) -> None:
        """React to the store's view of the job (after a heartbeat)."""
        if doc is None:
            self.request_stop("lease_lost")
        elif doc.get("cancel_requested"):
            self.request_stop("cancelled")

    def progress(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {"bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                "files_done": self.files_done, "files_total": self.files_total,
                "attempts": self.attempts,
                "rate_bps": int(self.bytes_done / elapsed) if self.bytes_done else 0}


class TransferEngine:
    """Runs jobs.  ``on_change(site, adaptor, path, deleted)`` keeps the catalogue
    current after a copy or move."""

    def __init__(self, config: Config, federation: Federation,
                 on_change: Callable[[str, Adaptor, str, bool], None] | None = None) -> None:
        self.config = config
        self.federation = federation
        self.on_change = on_change
        self.retries = max(0, int(config.transfers.retries))

    # -- entry point ----------------------------------------------------------------------
    def run(self, job: dict[str, Any], ctl: JobControl) -> tuple[str, dict[str, Any]]:
        """Run ``job``; return ``(terminal_status, fields)``.  Raises LeaseLost."""
        ctl.attempts += 1
        state: dict[str, Any] = {"committed": [], "created_dirs": [], "target_created":
                                 bool(job.get("target_created"))}
        try:
            fields = self._run(job, ctl, state)
            return "succeeded", fields
        except Cancelled:
            self._cleanup(job, state)
            return "cancelled", {"error": {"code": "cancelled",
                                           "message": "cancelled by request"}}
        except LeaseLost:
            raise
        except JobFailure as exc:
            return "failed", {"error": {"code": exc.code, "message": exc.message,
                                        "status": exc.status}}
        except errors.AdaptorError as exc:
            return "failed", {"error": {"code": exc.code, "message": exc.message}}
        except Exception as exc:  # never let a bug leave a job running forever
            log.exception("transfer %s crashed", job["id"])
            return "failed", {"error": {"code": "internal_error",
                                        "message": f"{exc.__class__.__name__}"}}

    def _run(self, job: dict[str, Any], ctl: JobControl,
             state: dict[str, Any]) -> dict[str, Any]:
        src_site, src = parse_site_path(job["from"])
        dst_site, dst = parse_site_path(job["to"])
        source, target = self.federation.get(src_site), self.federation.get(dst_site)
        alg = job.get("checksum_alg") or self.config.transfers.checksum
        alg = None if alg in (None, "none") else alg
        if target.read_only:
            raise JobFailure("read_only", f"site {dst_site} is read-only", 403)
        entry = self._retry(ctl, lambda: source.stat(src))
        if entry.is_dir and not job.get("recursive"):
            raise JobFailure("is_a_directory", "the source is a directory; set "
                             "\"recursive\": true to copy a tree", 422)
        existing = self._stat_or_none(ctl, target, dst)
        if existing is not None and not job.get("target_checked"):
            if not job.get("overwrite", True):
                raise JobFailure("exists", "the target exists and overwrite is false", 409)
            if existing.is_dir and not entry.is_dir:
                raise JobFailure("is_a_directory", "the target is a directory", 409)
            if entry.is_dir and not existing.is_dir:
                raise JobFailure("not_a_directory", "the target is a file", 409)
        if not job.get("target_checked"):
            state["target_created"] = existing is None
            ctl.persist({"target_checked": True, "target_created": existing is None})
        same_site = src_site == dst_site
        checksum: dict[str, str] | None = None
        if job.get("move") and same_site and Capability.ATOMIC_RENAME in source.capabilities:
            ctl.bytes_total = entry.size
            ctl.files_total = 1 if not entry.is_dir else None
            self._retry(ctl, lambda: source.rename(src, dst, overwrite=True))
            if not entry.is_dir:
                ctl.add_bytes(entry.size)
                ctl.files_done = 1
                if alg and Capability.CHECKSUM in target.capabilities:
                    value = target.checksum(dst, alg)
                    checksum = {alg: value} if value else None
            self._notify(src_site, source, src, True)
            self._notify(dst_site, target, dst, False)
            return {"checksum": checksum}
        if entry.is_dir:
            self._copy_tree(job, ctl, state, source, src, target, dst, alg)
        else:
            ctl.bytes_total, ctl.files_total = entry.size, 1
            n, checksum = self._copy_file(job, ctl, state, source, src, target, dst, alg,
                                          same_site)
            ctl.files_done = 1
            ctl.bytes_total = n
        self._notify(dst_site, target, dst, False)
        if job.get("move"):
            ctl.check()
            self._retry(ctl, lambda: source.remove(src, recursive=entry.is_dir))
            self._notify(src_site, source, src, True)
        return {"checksum": checksum}

    # -- one file ---------------------------------------------------------------------------
    def _copy_file(self, job: dict[str, Any], ctl: JobControl, state: dict[str, Any],
                   source: Adaptor, src: str, target: Adaptor, dst: str, alg: str | None,
                   same_site: bool) -> tuple[int, dict[str, str] | None]:
        attempt = 0
        while True:
            ctl.check()
            before = ctl.bytes_done
            try:
                n, digest = self._copy_once(ctl, state, source, src, target, dst, alg,
                                            same_site)
                expected = job.get("expected_checksum")
                if expected and digest and digest != expected:
                    with contextlib.suppress(errors.AdaptorError):
                        target.remove(dst)
                    raise JobFailure("checksum_mismatch", f"the source's {alg} is not the "
                                     "expected one", 422)
                return n, ({alg: digest} if alg and digest else None)
            except RETRYABLE as exc:
                ctl.bytes_done = before
                attempt += 1
                if attempt > self.retries:
                    raise
                ctl.attempts += 1
                delay = retry_base_seconds() * (2 ** (attempt - 1))
                log.info("transfer %s: %s; retry %d in %.1fs", ctl.job_id, exc.message,
                         attempt, delay)
                ctl.sleep(delay)

    def _copy_once(self, ctl: JobControl, state: dict[str, Any], source: Adaptor, src: str,
                   target: Adaptor, dst: str, alg: str | None,
                   same_site: bool) -> tuple[int, str | None]:
        server_side = False
        verified: str | None = None  # the digest a third-party copy verified itself
        if same_site and Capability.SERVER_COPY in target.capabilities:
            target.copy(src, dst, overwrite=True)
            server_side = True
        elif (source.type_name == target.type_name and not same_site
              and Capability.THIRD_PARTY_COPY in target.capabilities
              and Capability.THIRD_PARTY_COPY in source.capabilities):
            try:
                verified = target.copy_from(source, src, dst, overwrite=True, checksum=alg,
                                            cancel=ctl.stop)
                server_side = True
            except errors.Unsupported as exc:  # e.g. two S3 endpoints: stream instead
                log.info("transfer %s: no third-party path (%s); streaming", ctl.job_id,
                         exc.message)
            except errors.AdaptorError:
                ctl.check()  # stopped by a cancel (or a lost lease): say so, not "failed"
                raise
        if server_side:
            n = target.stat(dst).size
            state["committed"].append(dst)
            ctl.add_bytes(n)
        else:
            # streamed: hash on the way; then the target's server checksums it (where
            # it gives none after all, the target is read and hashed whole), or the
            # target is read back and compared with a CRC-32 per block kept on the way
            server_sums = bool(alg) and Capability.CHECKSUM in target.capabilities
            sink = ThreadedHashingSink([alg] if alg else [], blocks=not server_sums)
            try:
                n = stream_copy(source, src, target, dst, sink=sink, on_chunk=ctl.add_bytes)
            finally:
                sink.close()
            state["committed"].append(dst)
            src_digest = sink.hexdigests()[alg] if alg else None
            if alg and server_sums:
                self._compare(target, dst, alg, src_digest, self._checksum(ctl, target, dst, alg))
            else:
                self._verify_blocks(ctl, target, dst, n, sink.block_crcs() or [])
            return n, src_digest
        # a server-side copy: checksum both ends (server-side or read, in parallel)
        src_size = source.stat(src).size
        if src_size != n:
            self._compare(target, dst, "size", str(src_size), str(n))
        if not alg:
            return n, None
        if verified:  # both servers computed ``alg`` during the copy and agreed
            return n, verified
        with ThreadPoolExecutor(2, thread_name_prefix="verify") as ex:
            fs, fd = (ex.submit(self._checksum, ctl, a, p, alg)
                      for a, p in ((source, src), (target, dst)))
            src_digest, dst_digest = fs.result(), fd.result()
        self._compare(target, dst, alg, src_digest, dst_digest)
        return n, src_digest

    @staticmethod
    def _compare(target: Adaptor, dst: str, alg: str, want: str | None, got: str) -> None:
        if want != got:
            with contextlib.suppress(errors.AdaptorError):
                target.remove(dst)
            raise errors.ChecksumMismatch(f"target {alg} differs from the source's", dst)

    def _verify_blocks(self, ctl: JobControl, target: Adaptor, dst: str, size: int,
                       crcs: list[int]) -> None:
        """Read the target back (ranges in parallel) and compare every block's CRC-32
        with what was sent; a difference removes the target and is retried."""
        bad: str | None = None
        if target.stat(dst).size != size:
            bad = "size"
        elif crcs:
            parts = max(1, min(VERIFY_THREADS, len(crcs)))
            bounds = [len(crcs) * i // parts for i in range(parts + 1)]

            def check(i: int) -> bool:
                lo, hi = bounds[i], bounds[i + 1]
                offset = lo * BLOCK_SIZE
                length = min(size, hi * BLOCK_SIZE) - offset
                got = BlockCRC()
                for chunk in iter_chunks(target.open_read(dst, offset, length), BLOCK_SIZE):
                    got.update(chunk)
                    ctl.check()
                return got.finish() == crcs[lo:hi]

            with ThreadPoolExecutor(parts, thread_name_prefix="verify") as ex:
                if not all(ex.map(check, range(parts))):
                    bad = "content"
        if bad is not None:
            with contextlib.suppress(errors.AdaptorError):
                target.remove(dst)
            raise errors.ChecksumMismatch(f"the target read back differs ({bad})", dst)

    def _checksum(self, ctl: JobControl, adaptor: Adaptor, path: str, alg: str) -> str:
        """Server-side checksum when offered, else read the file and hash it."""
        if Capability.CHECKSUM in adaptor.capabilities:
            value = adaptor.checksum(path, alg)
            if value:
                return value.lower()
        h = hashlib.new(alg)
        for chunk in iter_chunks(adaptor.open_read(path), BLOCK_SIZE):
            h.update(chunk)
            ctl.check()
        return h.hexdigest()

    # -- trees -----------------------------------------------------------------------------------
    def _walk(self, ctl: JobControl, source: Adaptor,
              root: str) -> tuple[list[str], list[tuple[str, int]]]:
        dirs: list[str] = []
        files: list[tuple[str, int]] = []
        todo = [""]
        while todo:
            rel = todo.pop()
            ctl.check()
            where = join(root, rel) if rel else root
            for e in self._retry(ctl, lambda w=where: source.list(w)):  # type: ignore[misc]
                child = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir:
                    dirs.append(child)
                    todo.append(child)
                else:
                    files.append((child, e.size))
        return sorted(dirs), sorted(files)

    def _copy_tree(self, job: dict[str, Any], ctl: JobControl, state: dict[str, Any],
                   source: Adaptor, src: str, target: Adaptor, dst: str,
                   alg: str | None) -> None:
        dirs, files = self._walk(ctl, source, src)
        ctl.files_total = len(files)
        ctl.bytes_total = sum(s for _, s in files)
        self._ensure_dir(ctl, target, dst)
        for d in dirs:
            self._ensure_dir(ctl, target, join(dst, d))
        resume_after = job.get("resume_after")
        for rel, size in files:
            if resume_after is not None and rel <= resume_after:
                ctl.files_done += 1
                ctl.add_bytes(size)
                continue
            self._copy_file(job, ctl, state, source, join(src, rel), target,
                            join(dst, rel), alg, False)
            ctl.files_done += 1
            ctl.persist({"resume_after": rel})

    def _ensure_dir(self, ctl: JobControl, target: Adaptor, path: str) -> None:
        try:
            self._retry(ctl, lambda: target.mkdir(path))
        except errors.Exists:
            if not target.stat(path).is_dir:
                raise JobFailure("not_a_directory", f"{path} exists and is a file",
                                 409) from None

    # -- helpers -------------------------------------------------------------------------
    def _retry(self, ctl: JobControl, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            ctl.check()
            try:
                return fn()
            except (errors.Transient, errors.Unavailable):
                attempt += 1
                if attempt > self.retries:
                    raise
                ctl.attempts += 1
                ctl.sleep(retry_base_seconds() * (2 ** (attempt - 1)))

    def _stat_or_none(self, ctl: JobControl, adaptor: Adaptor, path: str) -> Any:
        try:
            return self._retry(ctl, lambda: adaptor.stat(path))
        except errors.NotFound:
            return None

    def _notify(self, site: str, adaptor: Adaptor, path: str, deleted: bool) -> None:
        if self.on_change is not None:
            self.on_change(site, adaptor, path, deleted)

    def _cleanup(self, job: dict[str, Any], state: dict[str, Any]) -> None:
        """After a cancel: remove what this job made visible at the target."""
        dst_site, dst = parse_site_path(job["to"])
        target = self.federation.get(dst_site)
        try:
            if state["target_created"]:
                with contextlib.suppress(errors.NotFound):
                    target.remove(dst, recursive=bool(job.get("recursive")))
            else:
                for path in state["committed"]:
                    with contextlib.suppress(errors.NotFound):
                        target.remove(path)
        except errors.AdaptorError as exc:
            log.warning("transfer %s: cleanup after cancel failed: %s", job["id"], exc.message)
        self._notify(dst_site, target, dst, not target_exists(target, dst))


def target_exists(adaptor: Adaptor, path: str) -> bool:
    try:
        adaptor.stat(path)
        return True
    except errors.AdaptorError:
        return False
