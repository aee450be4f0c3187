"""The ONLY mapping from adaptor errors (and path errors) to DAV status codes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from wsgidav.dav_error import (
    HTTP_BAD_GATEWAY,
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FORBIDDEN,
    HTTP_INSUFFICIENT_STORAGE,
    HTTP_NOT_FOUND,
    HTTP_NOT_IMPLEMENTED,
    HTTP_PRECONDITION_FAILED,
    DAVError,
)

from adaptors import errors
from fedgate.namespace import PathError

log = logging.getLogger(__name__)

HTTP_SERVICE_UNAVAILABLE = 503

STATUS: dict[type[errors.AdaptorError], int] = {
    errors.NotFound: HTTP_NOT_FOUND,
    errors.Exists: HTTP_PRECONDITION_FAILED,
    errors.PermissionDenied: HTTP_FORBIDDEN,
    errors.ReadOnly: HTTP_FORBIDDEN,
    errors.NotEmpty: HTTP_CONFLICT,
    errors.NotADirectory: HTTP_CONFLICT,
    errors.IsADirectory: HTTP_CONFLICT,
    errors.ParentMissing: HTTP_CONFLICT,
    errors.Unsupported: HTTP_NOT_IMPLEMENTED,
    errors.InsufficientStorage: HTTP_INSUFFICIENT_STORAGE,
    errors.Transient: HTTP_SERVICE_UNAVAILABLE,
    errors.Unavailable: HTTP_SERVICE_UNAVAILABLE,
    errors.ChecksumMismatch: HTTP_BAD_GATEWAY,
}


def status_for(exc: errors.AdaptorError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return HTTP_BAD_GATEWAY


def to_dav_error(exc: errors.AdaptorError | PathError) -> DAVError:
    if isinstance(exc, PathError):
        return DAVError(HTTP_BAD_REQUEST, str(exc))
    status = status_for(exc)
    if status >= 500:
        log.warning("storage error (%s): %s", exc.code, exc.message)
    return DAVError(status, exc.message)


@contextlib.contextmanager
def dav_errors() -> Iterator[None]:
    """Translate adaptor errors raised inside the block into DAVError."""
    try:
        yield
    except (errors.AdaptorError, PathError) as exc:
        raise to_dav_error(exc) from exc
