#!/opt/fedgate/bin/python
"""Container health check of the fedgate image (installed as ``fedgate-healthcheck``).

    fedgate-healthcheck [auto|dav|staging|worker|serve] [--ready] [--config FILE]

``auto`` (the default, used by the image's HEALTHCHECK) reads the role and
``--config`` from the command line of PID 1 (``fedgate serve-dav --config F``).
Ports come from ``listen`` in the config file (defaults 8000 and 8002), and a
wildcard bind address is probed on loopback.

- dav: ``GET /.well-known/fedgate/healthz`` (or ``readyz``) answers 200 (no
  credentials; ``GET /`` needs them).
- staging: ``GET /healthz`` answers 200; with ``--ready``, ``GET /readyz``.
- worker: PID 1 is running; with ``--ready``, the state store answers a ping.
- serve: dav and staging.

Exit 0 when healthy, 1 when not, with one line on stdout saying why.  Only the
standard library and PyYAML are used for the HTTP checks, so a probe costs a
few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/fedgate/fedgate.yaml"
DEFAULT_PORTS = {"webdav": 8000, "staging": 8002}
ROLE_OF_COMMAND = {"serve-dav": "dav", "serve-staging": "staging", "worker": "worker",
                   "serve": "serve"}
TIMEOUT_S = 4.0


class Unhealthy(Exception):
    """The reason a check failed (one line)."""


def pid1_command_line(proc: Path = Path("/proc/1")) -> list[str]:
    try:
        raw = (proc / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def parse_command_line(args: list[str]) -> tuple[str | None, str | None]:
    """The role and ``--config`` value of a ``fedgate ...`` command line."""
    role: str | None = None
    config: str | None = None
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            config = args[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif role is None and arg in ROLE_OF_COMMAND and \
                (i == 0 or args[i - 1] not in ("--config", "--data-dir")):
            role = ROLE_OF_COMMAND[arg]
    return role, config


def read_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise Unhealthy(f"cannot read config {path}: {exc.__class__.__name__}") from exc
    return doc if isinstance(doc, dict) else {}


def endpoint(doc: dict[str, Any], key: str) -> tuple[str, int, bool]:
    """(host to connect to, port, TLS) of ``listen.<key>``."""
    listen = doc.get("listen")
    if not isinstance(listen, dict):
        listen = {}
    value = str(listen.get(key) or f"127.0.0.1:{DEFAULT_PORTS[key]}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):  # a wildcard bind address: probe on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    tls = isinstance(listen.get("tls"), dict)
    return host, int(port), tls


def http_status(host: str, port: int, tls: bool, method: str, path: str) -> int:
    conn: http.client.HTTPConnection
    if tls:
        # a local liveness probe: the certificate names the public host, not loopback
        ctx = ssl._create_unverified_context()  # noqa: S323
        conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_S, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, headers={"User-Agent": "fedgate-healthcheck"})
        status = conn.getresponse().status
    except OSError as exc:
        raise Unhealthy(f"{method} {path} on {host}:{port}: {exc}") from exc
    finally:
        conn.close()
    return status


def check_dav(doc: dict[str, Any], ready: bool = False) -> str:
    host, port, tls = endpoint(doc, "webdav")
    path = "/.well-known/fedgate/" + ("readyz" if ready else "healthz")
    status = http_status(host, port, tls, "GET", path)
    if status != 200:
        raise Unhealthy(f"GET {path} on {host}:{port} answered {status}")
    return f"dav ok ({host}:{port})"


def check_staging(doc: dict[str, Any], ready: bool) -> str:
    host, port, tls = endpoint(doc, "staging")
    path = "/readyz" if ready else "/healthz"
    status = http_status(host, port, tls, "GET", path)
    if status != 200:
        raise Unhealthy(f"GET {path} on {host}:{port} answered {status}")
    return f"staging ok ({path} on {host}:{port})"


def check_worker(doc: dict[str, Any], ready: bool, proc: Path = Path("/proc/1")) -> str:
    try:
        state = next((line.split()[1] for line in (proc / "status").read_text().splitlines()
                      if line.startswith("State:")), "?")
    except OSError as exc:
        raise Unhealthy("PID 1 is gone") from exc
    if state in ("Z", "X"):
        raise Unhealthy(f"PID 1 is not running (state {state})")
    if not ready:
        return "worker ok (running)"
    url = doc.get("state")
    if not isinstance(url, str) or not url:
        return "worker ok (default SQLite store)"
    from fedgate.store import open_store

    try:
        store = open_store(url)
        try:
            store.ping()
        finally:
            store.close()
    except Exception as exc:
        raise Unhealthy(f"state store does not answer: {exc.__class__.__name__}") from exc
    return "worker ok (state store answers)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedgate-healthcheck", description=__doc__.split("\n")[0])
    p.add_argument("role", nargs="?", default="auto",
                   choices=["auto", "dav", "staging", "worker", "serve"])
    p.add_argument("--ready", action="store_true", help="readiness instead of liveness")
    p.add_argument("--config", help="config file (default: PID 1's --config, "
                                    "$FEDGATE_CONFIG, " + DEFAULT_CONFIG + ")")
    args = p.parse_args(argv)
    role: str | None = args.role
    config = args.config
    if role == "auto" or config is None:
        pid1_role, pid1_config = parse_command_line(pid1_command_line())
        if role == "auto":
            role = pid1_role
        if config is None and pid1_config is not None:
            config = pid1_config if Path(pid1_config).is_absolute() else \
                str(Path("/proc/1/cwd") / pid1_config)
    config = config or os.environ.get("FEDGATE_CONFIG") or DEFAULT_CONFIG
    try:
        if role is None:
            print("ok (no server role in PID 1's command line)")
            return 0
        doc = read_config(config) if Path(config).exists() or role != "worker" else {}
        if role == "dav":
            print(check_dav(doc, args.ready))
        elif role == "staging":
            print(check_staging(doc, args.ready))
        elif role == "worker":
            print(check_worker(doc, args.ready))
        else:
            print(check_dav(doc) + "; " + check_staging(doc, args.ready))
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
