"""The one adaptor error tree.

Every adaptor translates its back end's exceptions into these classes at its
own boundary (and nowhere else).  The gateway maps them to DAV status codes in
``gateway/errors.py``; the staging service maps them to JSON errors in one
middleware.  Nothing above an adaptor ever sees an ``OSError``, a botocore
error, an asyncssh error or a ``gfal2.GError``.
"""

from __future__ import annotations

import errno


class AdaptorError(Exception):
    """Base of every error an adaptor raises.

    ``path`` is the site-relative path the operation was about (may be empty).
    The message MUST NOT contain secrets (passwords, keys, tokens, signed URLs).
    """

    #: stable machine-readable code, used in JSON errors and logs
    code = "storage_error"

    def __init__(self, message: str = "", path: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.path = path

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class NotFound(AdaptorError):
    """No such file or directory."""

    code = "not_found"


class Exists(AdaptorError):
    """The target already exists."""

    code = "exists"


class PermissionDenied(AdaptorError):
    """The back end refused the operation for lack of permission."""

    code = "permission_denied"


class NotEmpty(AdaptorError):
    """The directory is not empty."""

    code = "not_empty"


class NotADirectory(AdaptorError):
    """A path component is not a directory (or a listing was asked of a file)."""

    code = "not_a_directory"


class IsADirectory(AdaptorError):
    """A file operation was asked of a directory."""

    code = "is_a_directory"


class ParentMissing(AdaptorError):
    """The parent directory of the target does not exist."""

    code = "parent_missing"


class Unsupported(AdaptorError):
    """The back end cannot do this (for example a capability it lacks)."""

    code = "unsupported"


class ReadOnly(AdaptorError):
    """The site is configured read-only."""

    code = "read_only"


class InsufficientStorage(AdaptorError):
    """The back end is out of space or quota."""

    code = "insufficient_storage"


class Transient(AdaptorError):
    """A fault that may go away when retried (timeouts, 5xx, SlowDown, resets)."""

    code = "transient"


class Unavailable(AdaptorError):
    """The site cannot be used now: unreachable, authentication failed, bad config.

    Unlike :class:`Transient` this describes the site, not one request; the
    gateway shows such a site as an empty read-only collection with the reason.
    """

    code = "site_unavailable"


class ChecksumMismatch(AdaptorError):
    """Data read back does not match the expected checksum."""

    code = "checksum_mismatch"


#: POSIX errno -> adaptor error, for back ends that report errnos (the local
#: file system, gfal2).  Unknown codes map to :class:`AdaptorError`.
ERRNO_ERRORS: dict[int, type[AdaptorError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: Exists,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.ENOTEMPTY: NotEmpty,
    errno.ENOTDIR: NotADirectory,
    errno.EISDIR: IsADirectory,
    errno.ENOSPC: InsufficientStorage,
    errno.EDQUOT: InsufficientStorage,
    errno.EROFS: ReadOnly,
    errno.ECONNREFUSED: Unavailable,
    errno.EHOSTUNREACH: Unavailable,
    errno.ENETUNREACH: Unavailable,
    errno.EHOSTDOWN: Unavailable,
    errno.ETIMEDOUT: Transient,
    errno.ECONNRESET: Transient,
    errno.ECONNABORTED: Transient,
    errno.EPIPE: Transient,
    errno.EAGAIN: Transient,
    errno.EBUSY: Transient,
    errno.ENOSYS: Unsupported,
    errno.EOPNOTSUPP: Unsupported,
    errno.EPROTONOSUPPORT: Unsupported,
}
