"""Paths and loaders shared by the deploy/ tests."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
SFTP_TEST = DEPLOY / "sftp-test"
COMPOSE_CONFIG = DEPLOY / "config" / "fedgate.yaml"

#: the Kubernetes version the manifests are validated against (kubernetes-validate ships
#: the schemas of 1.25 ... 1.37; 1.34 is the oldest still supported by upstream here)
K8S_VERSION = "1.34.0"


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    """Every document of deploy/k8s (parsed once; do not modify them)."""
    out = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out.append((path.name, doc))
    return out


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == kind}


def missing_adaptor_modules(types: set[str]) -> list[str]:
    """The site types whose adaptor module cannot be imported here."""
    from adaptors import ADAPTOR_TYPES

    missing = []
    for t in sorted(types):
        module = ADAPTOR_TYPES[t].partition(":")[0]
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(t)
    return missing


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedgate_healthcheck",
                                                  DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
