"""The staging service's app factory (aiohttp) and its blocking entry point.

``init_app(config)`` builds the application; its cleanup contexts open the
state store and the mount table, start the catalogue refresher and (with
``workers=True``) the transfer workers and the webhook dispatcher, and close
everything in reverse order on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from fedgate.auth import Authenticator, Authorizer
from fedgate.config import Config
from fedgate.federation import Federation
from fedgate.store import open_store
from staging.catalogue import Catalogue
from staging.errors import error_middleware
from staging.jobs import JobService
from staging.metrics import Metrics, metrics_middleware
from staging.services import SERVICES, Services
from staging.views import routes
from staging.webhooks import WebhookDispatcher, load_secrets
from staging.worker import WorkerPool, drain

log = logging.getLogger(__name__)

#: request bodies above this are answered 413
MAX_BODY = 1024 * 1024
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
_TASKS: web.AppKey[list[asyncio.Task[Any]]] = web.AppKey("tasks", list)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    # store and adaptor calls run in threads; give them more than the default few
    executor = ThreadPoolExecutor(max_workers=48, thread_name_prefix="staging-io")
    loop.set_default_executor(executor)
    store = await asyncio.to_thread(open_store, config.state)
    federation = await asyncio.to_thread(Federation, config, store)
    authn = await asyncio.to_thread(Authenticator, config.users, config.jwt)
    s = Services(config=config, store=store, federation=federation, authn=authn,
                 authz=Authorizer(config.permissions), jobs=JobService(store),
                 catalogue=Catalogue(config, store, federation), metrics=app[METRICS])
    app[SERVICES] = s
    app[_TASKS] = []
    yield
    for t in app[_TASKS]:
        t.cancel()
    await asyncio.gather(*app[_TASKS], return_exceptions=True)
    await drain(loop, executor, federation.close, store.close)


async def _catalogue_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SERVICES]
    app[_TASKS].append(asyncio.create_task(s.catalogue.refresh_loop(), name="catalogue"))
    yield


async def _workers_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SERVICES]
    secrets = await asyncio.to_thread(load_secrets, s.config)
    s.dispatcher = WebhookDispatcher(s.config, s.store, secrets,
                                     on_attempt=s.metrics.webhook_attempt)
    dispatcher = s.dispatcher

    def finished(doc: dict[str, Any]) -> None:
        s.metrics.job_finished(doc["status"], doc.get("bytes_done") or 0,
                               [doc["from"].partition(":")[0], doc["to"].partition(":")[0]])
        if doc.get("webhook"):
            dispatcher.wake.set()

    s.pool = WorkerPool(s.config, s.store, s.federation, wake=s.jobs.submitted,
                        on_finish=finished)
    tasks = [asyncio.create_task(s.pool.run(), name="workers"),
             asyncio.create_task(dispatcher.run(), name="webhooks")]
    yield
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await s.pool.close()
    await dispatcher.close()


def init_app(config: Config, *, workers: bool = True) -> web.Application:
    """The staging application for ``config`` (workers and webhooks included
    unless ``workers=False``, as for ``fedgate serve-staging`` next to separate
    ``fedgate worker`` processes)."""
    metrics = Metrics()
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[metrics_middleware(metrics), error_middleware])
    app[CONFIG] = config
    app[METRICS] = metrics
    app.cleanup_ctx.append(_services_ctx)
    app.cleanup_ctx.append(_catalogue_ctx)
    if workers:
        app.cleanup_ctx.append(_workers_ctx)
    app.add_routes(routes)
    return app


async def start_site(config: Config, *, workers: bool = True, host: str | None = None,
                     port: int | None = None) -> web.AppRunner:
    """Start the app on ``listen.staging`` (or ``host``/``port``); returns the runner."""
    app = init_app(config, workers=workers)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    h, p = config.listen.staging
    ssl_ctx = None
    if config.listen.tls_cert and config.listen.tls_key:
        import ssl

        def tls() -> ssl.SSLContext:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(config.listen.tls_cert), str(config.listen.tls_key))
            return ctx

        ssl_ctx = await asyncio.to_thread(tls)
    site = web.TCPSite(runner, host or h, p if port is None else port, ssl_context=ssl_ctx)
    await site.start()
    return runner


def run_staging(config: Config, workers: bool = True) -> None:
    """Blocking entry point of ``fedgate serve-staging`` (SIGINT/SIGTERM stop it)."""
    from staging.worker import signals_to_thread

    async def main() -> None:
        stop = asyncio.Event()
        signals_to_thread(asyncio.get_running_loop(), stop)  # before any thread starts
        runner = await start_site(config, workers=workers)
        host, port = config.listen.staging
        log.info("staging API on http://%s:%d/api/v1/", host, port)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
