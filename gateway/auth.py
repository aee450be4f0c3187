"""The gateway's front WSGI middleware: path rules, authentication, permissions.

Runs before wsgidav sees a request:
1. PATH_INFO and the Destination header must be valid UTF-8 and pass
   ``fedgate.namespace.normalize`` (400 otherwise), so no traversal in any
   encoding reaches wsgidav or a site.
2. Basic, Bearer and x-access-token credentials via ``fedgate.auth`` (401 with
   both challenges; the reason is logged, never returned).
3. Permission rules and token scopes (403).
Also writes one access-log line per request (never headers or credentials).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from fedgate.auth import Authenticator, AuthError, Authorizer, Principal
from fedgate.namespace import PathError, decode_wsgi_path, normalize

log = logging.getLogger("fedgate.gateway")
access_log = logging.getLogger("fedgate.access")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

HEALTH_PREFIX = "/.well-known/fedgate/"
READ_METHODS = {"GET", "HEAD", "PROPFIND", "OPTIONS"}
_CHALLENGES = [("WWW-Authenticate", 'Basic realm="fedgate", charset="UTF-8"'),
               ("WWW-Authenticate", 'Bearer realm="fedgate"')]


def _plain(start_response: StartResponse, status: str, text: str,
           extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))] + (extra or []))
    return [body]


def destination_path(value: str) -> str:
    """The normalised namespace path of a Destination header (raises PathError)."""
    parts = urlsplit(value)
    raw = unquote_to_bytes(parts.path)
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise PathError("Destination is not valid UTF-8") from exc
    return normalize(text or "/")


class _Logged:
    """Wraps a response iterable; logs once it is closed (status known then)."""

    def __init__(self, inner: Iterable[bytes], done: Callable[[], None]) -> None:
        self.inner = inner
        self.done = done

    def __iter__(self) -> Any:
        return iter(self.inner)

    def close(self) -> None:
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self.done()


class GatewayMiddleware:
    def __init__(self, app: WSGIApp, authenticator: Authenticator, authorizer: Authorizer,
                 ready: Callable[[], str | None] | None = None) -> None:
        self.app = app
        self.authn = authenticator
        self.authz = authorizer
        self.ready = ready

    def _health(self, which: str, start_response: StartResponse) -> list[bytes]:
        """Unauthenticated probes for orchestrators: ``healthz`` (the process
        answers) and ``readyz`` (the state store answers)."""
        if which == "healthz":
            return _plain(start_response, "200 OK", "ok")
        if which == "readyz":
            problem = self.ready() if self.ready else None
            if problem:
                return _plain(start_response, "503 Service Unavailable", problem)
            return _plain(start_response, "200 OK", "ready")
        return _plain(start_response, "404 Not Found", "not found")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        t0 = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET")
        status_holder: list[str] = ["-"]

        def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_holder[0] = status.split(" ", 1)[0]
            return start_response(status, headers, exc_info) if exc_info else \
                start_response(status, headers)

        result = self._handle(environ, sr, method)
        return _Logged(result, lambda: access_log.info(
            "%s %s %s user=%s %.1fms", method, environ.get("PATH_INFO", ""), status_holder[0],
            getattr(environ.get("fedgate.principal"), "name", "-"),
            (time.monotonic() - t0) * 1000))

    def _handle(self, environ: dict[str, Any], start_response: StartResponse,
                method: str) -> Any:
        raw_path = environ.get("PATH_INFO", "")
        if raw_path.startswith(HEALTH_PREFIX) and method in ("GET", "HEAD"):
            return self._health(raw_path[len(HEALTH_PREFIX):], start_response)
        # 1. path rules
        try:
            path = normalize(decode_wsgi_path(environ.get("PATH_INFO", "") or "/"))
            dest = environ.get("HTTP_DESTINATION")
            dest_path = destination_path(dest) if dest else None
        except PathError as exc:
            return _plain(start_response, "400 Bad Request", f"bad path: {exc}")
        if method == "PROPFIND" and environ.get("HTTP_DEPTH", "infinity").lower() == "infinity":
            body = (b'<?xml version="1.0" encoding="utf-8"?>\n<D:error xmlns:D="DAV:">'
                    b"<D:propfind-finite-depth/></D:error>")
            start_response("403 Forbidden", [("Content-Type", 'application/xml; charset="utf-8"'),
                                             ("Content-Length", str(len(body)))])
            return [body]
        if method == "OPTIONS":
            return self.app(environ, start_response)
        # 2. authentication
        try:
            principal = self.authn.authenticate(environ.get("HTTP_AUTHORIZATION"),
                                                environ.get("HTTP_X_ACCESS_TOKEN"))
        except AuthError as exc:
            log.info("401 for %s %s from %s: %s", method, path, environ.get("REMOTE_ADDR"),
                     exc.reason)
            return _plain(start_response, "401 Unauthorized", "authentication required",
                          _CHALLENGES)
        environ["fedgate.principal"] = principal
        environ["wsgidav.auth.user_name"] = principal.name
        environ["wsgidav.auth.realm"] = "fedgate"
        environ["wsgidav.auth.roles"] = []
        environ["wsgidav.auth.permissions"] = []
        # 3. permissions
        denied = self._denied(principal, method, path, dest_path)
        if denied:
            log.info("403 for %s %s user=%s: %s", method, path, principal.name, denied)
            return _plain(start_response, "403 Forbidden", "permission denied")
        return self.app(environ, start_response)

    def _denied(self, p: Principal, method: str, path: str, dest: str | None) -> str | None:
        if path == "/" and method in READ_METHODS:
            return None
        need = "read" if method in READ_METHODS or method == "COPY" else "write"
        if not self.authz.allowed(p, path, need):
            return f"no {need} access to {path}"
        if dest is not None and method in ("COPY", "MOVE") and \
                not self.authz.allowed(p, dest, "write"):
            return f"no write access to {dest}"
        return None
