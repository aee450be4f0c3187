"""The ONE place where errors become JSON answers of the staging API.

Handlers and services raise :class:`ApiError` (validation, conflicts, auth),
adaptor errors (``adaptors.errors``), :class:`fedgate.namespace.PathError` or
:class:`fedgate.auth.AuthError`; :func:`error_middleware` turns each into
``{"error": {"code", "message"}}`` with a 4xx status.  Anything else is logged
and answered 500 without details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from adaptors import errors as aerr
from fedgate.auth import AuthError
from fedgate.namespace import PathError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP ``status``, stable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def unprocessable(message: str, code: str = "unprocessable") -> ApiError:
    return ApiError(422, code, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(message: str, code: str = "conflict") -> ApiError:
    return ApiError(409, code, message)


#: adaptor error class -> HTTP status (most specific first)
_ADAPTOR_STATUS: list[tuple[type[aerr.AdaptorError], int]] = [
    (aerr.NotFound, 404),
    (aerr.Exists, 409),
    (aerr.PermissionDenied, 403),
    (aerr.ReadOnly, 403),
    (aerr.NotEmpty, 409),
    (aerr.NotADirectory, 409),
    (aerr.IsADirectory, 409),
    (aerr.ParentMissing, 409),
    (aerr.Unsupported, 422),
    (aerr.InsufficientStorage, 507),
    (aerr.Transient, 503),
    (aerr.Unavailable, 503),
    (aerr.ChecksumMismatch, 502),
]


def adaptor_status(exc: aerr.AdaptorError) -> int:
    for cls, status in _ADAPTOR_STATUS:
        if isinstance(exc, cls):
            return status
    return 502


def json_error(status: int, code: str, message: str,
               headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers, content_type="application/json",
                        text=json.dumps({"error": {"code": code, "message": message}}))


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "unprocessable"}

WWW_AUTHENTICATE = 'Basic realm="fedgate", Bearer realm="fedgate"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if exc.status == 401 else None
        return json_error(exc.status, exc.code, exc.message, headers)
    except AuthError as exc:
        log.info("staging: authentication failed: %s", exc.reason)
        return json_error(401, "unauthorized", "authentication required",
                          {"WWW-Authenticate": WWW_AUTHENTICATE})
    except PathError as exc:
        return json_error(400, "bad_path", str(exc))
    except aerr.AdaptorError as exc:
        return json_error(adaptor_status(exc), exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        msg = exc.reason or code
        if exc.status == 413:
            msg = "request body too large"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return json_error(exc.status, code, msg, headers or None)
    except Exception:
        log.exception("staging: unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal_error", "internal error")
