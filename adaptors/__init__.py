"""Storage back ends.  ``create_adaptor`` is the one factory; ``adaptor_class``
resolves a site ``type`` (with its aliases) to the class that implements it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from adaptors.base import Adaptor, AdaptorContext

#: site type -> "module:Class"; aliases map to the same class
ADAPTOR_TYPES: dict[str, str] = {
    "local": "adaptors.local:LocalAdaptor",
    "native": "adaptors.local:LocalAdaptor",
    "sftp": "adaptors.sftp:SFTPAdaptor",
    "sshfs": "adaptors.sftp:SFTPAdaptor",
    "s3": "adaptors.s3:S3Adaptor",
    "gridftp": "adaptors.gridftp:GridFTPAdaptor",
}


def adaptor_class(site_type: str) -> type[Adaptor]:
    """The class for a site type; ``KeyError`` for an unknown type,
    ``ImportError`` when its module (or its library) is missing."""
    target = ADAPTOR_TYPES[site_type]
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Adaptor] = getattr(module, cls_name)
    return cls


def create_adaptor(options: Mapping[str, Any], context: AdaptorContext) -> Adaptor:
    """Build the adaptor for one validated site configuration (no network I/O)."""
    cls = adaptor_class(str(options["type"]))
    return cls(str(options["name"]), options, context)
