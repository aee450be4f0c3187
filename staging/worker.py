"""Transfer workers: claim jobs from the store (with a lease), run them in
threads, keep their leases alive, finish them exactly once.

Runs inside the staging service (``fedgate serve``) or alone as the
``fedgate worker`` role (:func:`run_worker`); any number of worker processes
may share one store.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fedgate.config import Config
from fedgate.federation import Federation
from fedgate.store import open_store
from fedgate.store.base import StateStore
from staging.catalogue import note_tree
from staging.jobs import lease_seconds
from staging.transfer import JobControl, LeaseLost, TransferEngine
from staging.webhooks import WebhookDispatcher, load_secrets

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.5


class WorkerPool:
    """Runs up to ``transfers.workers`` jobs at once in this process, and at most
    ``transfers.per_site_concurrency`` per site across ALL worker processes
    (site slots are leases in the shared store)."""

    def __init__(self, config: Config, store: StateStore, federation: Federation,
                 wake: asyncio.Event | None = None,
                 on_finish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.federation = federation
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self.slots = max(1, int(config.transfers.workers))
        self.per_site = max(1, int(config.transfers.per_site_concurrency))
        self.slot_freed = asyncio.Event()
        self.wake = wake or asyncio.Event()
        self.on_finish = on_finish
        self.running: dict[str, JobControl] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.lease_s = lease_seconds()
        self.engine = TransferEngine(config, federation, self._on_change)
        self.executor = ThreadPoolExecutor(max_workers=self.slots,
                                           thread_name_prefix="transfer")

    def _on_change(self, site: str, adaptor: Any, path: str, deleted: bool) -> None:
        note_tree(self.store, site, adaptor, path, deleted)

    def cancel_local(self, job_id: str) -> None:
        """Fast path for a cancel answered by this process."""
        ctl = self.running.get(job_id)
        if ctl is not None:
            ctl.request_stop("cancelled")

    async def run(self) -> None:
        while True:
            if len(self.tasks) >= self.slots:
                await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                doc = await asyncio.to_thread(self.store.job_claim, self.owner, self.lease_s)
            except Exception:
                log.exception("worker: claiming a job failed")
                doc = None
            if doc is None:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.5)
                continue
            task = asyncio.create_task(self._run_job(doc))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    def _sites(doc: dict[str, Any]) -> list[str]:
        return sorted({doc["from"].partition(":")[0], doc["to"].partition(":")[0]})

    async def _acquire_slots(self, doc: dict[str, Any], ctl: JobControl,
                             held: list[str]) -> None:
        """Take one of the ``per_site_concurrency`` slots of each site the job
        touches.  Slots are leases in the store, so the limit holds across every
        worker process; taken in sorted order (no deadlock), renewed by the
        heartbeat, released at the end, expired when a worker dies."""
        holder = f"{self.owner}/{doc['id']}"
        for site in self._sites(doc):
            while not ctl.stop.is_set():
                for k in range(self.per_site):
                    name = f"site-slot:{site}:{k}"
                    if await asyncio.to_thread(self.store.lease_acquire, name, holder,
                                               self.lease_s):
                        held.append(name)
                        break
                else:
                    self.slot_freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.slot_freed.wait(), 0.25)
                    continue
                break

    async def _release_slots(self, doc: dict[str, Any], held: list[str]) -> None:
        holder = f"{self.owner}/{doc['id']}"
        for name in held:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.lease_release, name, holder)
        if held:
            self.slot_freed.set()

    async def _run_job(self, doc: dict[str, Any]) -> None:
        job_id = doc["id"]
        ctl = JobControl(doc, self.owner, self.store, self.lease_s)
        self.running[job_id] = ctl
        if doc.get("cancel_requested"):
            ctl.request_stop("cancelled")
        held: list[str] = []
        hb = asyncio.create_task(self._heartbeat(ctl, doc, held))
        loop = asyncio.get_running_loop()
        try:
            await self._acquire_slots(doc, ctl, held)
            status, fields = await loop.run_in_executor(self.executor, self.engine.run,
                                                        doc, ctl)
        except LeaseLost:
            log.warning("worker: lost the lease on job %s; another worker has it", job_id)
            await self._stopped(job_id, hb, doc, held)
            return
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: shutting down
                await asyncio.shield(self._stopped(job_id, hb, doc, held))
                raise
            log.exception("worker: job %s crashed", job_id)
            status, fields = "failed", {"error": {"code": "internal_error",
                                                  "message": "worker error"}}
        fields = {**ctl.progress(), **fields}
        if status == "succeeded" and fields.get("bytes_total") is None:
            fields["bytes_total"] = fields["bytes_done"]
        try:
            final = await asyncio.to_thread(self.store.job_finish, job_id, self.owner,
                                            status, fields)
        finally:  # the slots are freed only once the job is finished in the store
            await self._stopped(job_id, hb, doc, held)
        if final is None:
            log.warning("worker: job %s was taken over before it finished", job_id)
            return
        log.info("job %s %s (%s bytes)", job_id, status, fields.get("bytes_done"))
        if self.on_finish is not None:
            self.on_finish(final)

    async def _stopped(self, job_id: str, hb: asyncio.Task[None], doc: dict[str, Any],
                       held: list[str]) -> None:
        hb.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hb
        self.running.pop(job_id, None)
        await self._release_slots(doc, held)

    async def _heartbeat(self, ctl: JobControl, doc: dict[str, Any],
                         held: list[str]) -> None:
        holder = f"{self.owner}/{doc['id']}"
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                latest = await asyncio.to_thread(self.store.job_update, ctl.job_id,
                                                 self.owner, ctl.progress(), self.lease_s)
                ctl.observe(latest)
                for name in list(held):
                    await asyncio.to_thread(self.store.lease_acquire, name, holder,
                                            self.lease_s)
            except Exception:
                log.exception("worker: heartbeat for %s failed", ctl.job_id)

    async def close(self) -> None:
        """Stop: running jobs are abandoned (their leases expire and another
        worker restarts them)."""
        abandoned = list(self.running)
        for ctl in self.running.values():
            ctl.request_stop("lease_lost")
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
        for job_id in abandoned:  # let another worker restart them at once
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.job_update, job_id, self.owner, {}, 0.0)


async def drain(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor,
                 *closers: Any) -> None:
    """Wait for every thread still running a store/adaptor call, then close things
    (closing a SQLite connection under a running call would crash the process)."""
    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging-close")
    try:
        await loop.run_in_executor(helper, executor.shutdown, True)
        for close in closers:
            await loop.run_in_executor(helper, close)
    finally:
        helper.shutdown(wait=False)


async def serve_worker(config: Config, stop: asyncio.Event) -> None:
    """The worker role: transfer workers plus webhook delivery, until ``stop``."""
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="io")
    loop.set_default_executor(executor)
    store = await asyncio.to_thread(open_store, config.state)
    federation = await asyncio.to_thread(Federation, config, store)
    secrets = await asyncio.to_thread(load_secrets, config)
    dispatcher = WebhookDispatcher(config, store, secrets)
    pool = WorkerPool(config, store, federation,
                      on_finish=lambda _doc: dispatcher.wake.set())
    tasks = [asyncio.create_task(pool.run()), asyncio.create_task(dispatcher.run())]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
        await dispatcher.close()
        await drain(loop, executor, federation.close, store.close)


def shutdown_timeout_s() -> float:
    """Longest a graceful stop may take (FEDGATE_SHUTDOWN_TIMEOUT_S, default 45 s:
    inside the 60 s grace period of the Kubernetes manifests)."""
    return float(os.environ.get("FEDGATE_SHUTDOWN_TIMEOUT_S", "45"))


def signals_to_thread(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT are taken by a dedicated thread (``sigwait``), not by the
    event loop: the stop is requested even if the loop is busy, and a watchdog
    armed at that moment dumps every thread's stack and exits if the drain takes
    longer than :func:`shutdown_timeout_s` (inside the pod's grace period).
    Must run before other threads start, so that they inherit the signal mask."""
    sigs = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)

    def waiter() -> None:
        signal.sigwait(sigs)
        faulthandler.dump_traceback_later(shutdown_timeout_s(), exit=True)
        log.info("stopping: finishing the current blocks and releasing leases")
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=waiter, name="fedgate-signals", daemon=True).start()


def run_worker(config: Config) -> None:
    """Blocking entry point of ``fedgate worker`` (stops on SIGINT/SIGTERM)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals_to_thread(loop, stop)
        await serve_worker(config, stop)

    asyncio.run(main())
