"""The namespace: ``/{site}/{path}`` rules.  Pure functions, no I/O.

Every path that reaches an adaptor passes :func:`normalize` first.  Rejected:
``.``/``..`` and empty segments, NUL and other control characters, backslashes,
invalid (including overlong) UTF-8, and segments that would turn into any of
those if a back end decoded them once more (``%2e%2e``, ``%2f``, ``%5c``).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_CTRL = re.compile(r"[\x00-\x1f\x7f]")
_PCT = re.compile(r"%[0-9a-fA-F]{2}")


class PathError(ValueError):
    """A path that must never reach a site (answered with 400)."""


def _check_segment(seg: str) -> None:
    if seg in ("", ".", ".."):
        raise PathError("empty, '.' or '..' path segment")
    if "\\" in seg or _CTRL.search(seg):
        raise PathError("backslash or control character in path")
    if _PCT.search(seg):
        again = unquote(seg, errors="strict")
        if again in (".", "..") or "/" in again or "\\" in again or _CTRL.search(again):
            raise PathError("percent-encoded traversal in path segment")


#: names the gateway keeps for itself (health probes live under /.well-known/)
RESERVED_SITE_NAMES = {".well-known"}


def valid_site_name(name: str) -> bool:
    try:
        _check_segment(name)
    except PathError:
        return False
    return "/" not in name and name not in RESERVED_SITE_NAMES


def decode_wsgi_path(raw: str) -> str:
    """PATH_INFO (bytes as latin-1, per PEP 3333) -> text, strict UTF-8."""
    try:
        return raw.encode("latin-1").decode("utf-8", errors="strict")
    except (UnicodeEncodeError, UnicodeDecodeError) as exc:
        raise PathError("path is not valid UTF-8") from exc


def normalize(path: str) -> str:
    """Validate a decoded namespace path; return it as ``/a/b`` (``/`` for root).

    A single trailing slash is allowed (collections); other empty segments are not.
    """
    if not path.startswith("/"):
        raise PathError("path must start with '/'")
    body = path[1:]
    if body.endswith("/"):
        body = body[:-1]
    if not body:
        return "/"
    for seg in body.split("/"):
        _check_segment(seg)
    return "/" + body


def split(path: str) -> tuple[str | None, str]:
    """``/site/a/b`` -> ``("site", "/a/b")``; ``/site`` -> ``("site", "/")``;
    ``/`` -> ``(None, "/")``.  ``path`` must be normalised."""
    if path == "/":
        return None, "/"
    site, _, rest = path[1:].partition("/")
    return site, "/" + rest


def join(site: str, rel: str) -> str:
    return f"/{site}" if rel == "/" else f"/{site}{rel}"


def is_within(path: str, prefix: str) -> bool:
    """True if ``path`` equals ``prefix`` or lies below it, by whole segments."""
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def parse_site_path(value: str) -> tuple[str, str]:
    """``site:/path`` (staging API and CLI form) -> ``(site, "/path")``."""
    site, sep, rel = value.partition(":")
    if not sep or not site:
        raise PathError("expected SITE:/PATH")
    if not valid_site_name(site):
        raise PathError("invalid site name")
    if not rel.startswith("/"):
        rel = "/" + rel
    return site, normalize(rel)
