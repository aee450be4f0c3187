"""Builds the gateway's WSGI application: path/auth middleware -> wsgidav ->
FederatedProvider, with locks and dead properties in the state store."""

from __future__ import annotations

import logging
from typing import Any

from wsgidav.dir_browser import WsgiDavDirBrowser
from wsgidav.error_printer import ErrorPrinter
from wsgidav.request_resolver import RequestResolver
from wsgidav.wsgidav_app import WsgiDAVApp

from fedgate.auth import Authenticator, Authorizer
from fedgate.federation import Federation
from gateway.auth import GatewayMiddleware
from gateway.provider import ChangeHook, FederatedProvider
from gateway.state import StoreLockStorage, StorePropertyManager

log = logging.getLogger(__name__)


class DirBrowser(WsgiDavDirBrowser):
    """wsgidav's directory browser looks the resource up at the back end for
    every request, but uses it only for GET and HEAD: other methods (PROPFIND,
    PUT, ...) skip that extra stat."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self.next_app(environ, start_response)
        return super().__call__(environ, start_response)


def change_hooks() -> list[ChangeHook]:
    """The catalogue's update hook, when the staging service is installed."""
    try:
        from staging.catalogue import note_change
    except ImportError:
        return []
    return [note_change]


def build_app(federation: Federation) -> GatewayMiddleware:
    cfg = federation.config
    provider = FederatedProvider(federation, change_hooks())
    dav_config: dict[str, Any] = {
        "provider_mapping": {"/": provider},
        "middleware_stack": [ErrorPrinter, DirBrowser, RequestResolver],
        "lock_storage": StoreLockStorage(federation.store),
        "property_manager": StorePropertyManager(federation.store),
        "http_authenticator": {"domain_controller": None, "accept_basic": False,
                               "accept_digest": False, "default_to_digest": False},
        "simple_dc": {"user_mapping": {"*": True}},
        "verbose": 1,
        "logging": {"enable": False},
        "suppress_version_info": True,
        "add_header_MS_Author_Via": True,
        "dir_browser": {"enable": True, "icon": False, "davmount": True,
                        "response_trailer": f"fedgate &middot; {cfg.name}",
                        "show_user": True},
    }
    dav = WsgiDAVApp(dav_config)
    wlog = logging.getLogger("wsgidav")  # let wsgidav's errors reach our handlers
    wlog.propagate = True
    wlog.setLevel(max(logging.WARNING, logging.getLogger().level))

    def ready() -> str | None:
        try:
            federation.store.ping()
        except Exception as exc:  # any store failure means not ready
            return f"state store unavailable: {exc.__class__.__name__}"
        return None

    return GatewayMiddleware(dav, Authenticator(cfg.users, cfg.jwt), Authorizer(cfg.permissions),
                             ready)
