"""What one staging process holds (built in app.py's cleanup contexts)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from fedgate.auth import Authenticator, Authorizer
from fedgate.config import Config
from fedgate.federation import Federation
from fedgate.store.base import StateStore
from staging.catalogue import Catalogue
from staging.jobs import JobService
from staging.metrics import Metrics
from staging.webhooks import WebhookDispatcher
from staging.worker import WorkerPool


@dataclass
class Services:
    config: Config
    store: StateStore
    federation: Federation
    authn: Authenticator
    authz: Authorizer
    jobs: JobService
    catalogue: Catalogue
    metrics: Metrics
    pool: WorkerPool | None = None
    dispatcher: WebhookDispatcher | None = None


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
