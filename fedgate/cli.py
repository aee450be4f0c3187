"""The ``fedgate`` command line (SPEC section 1)."""

from __future__ import annotations

import argparse
import gc
import getpass
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fedgate import __version__
from fedgate.config import Config, ConfigError, demo_config, load_config

log = logging.getLogger("fedgate")


class UsageError(Exception):
    """Bad usage: one line to stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one clear line, exit 2
        self.exit(2, f"fedgate: error: {message}\n")


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": self.formatTime(record), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("asyncssh", "botocore", "s3fs", "urllib3", "aiobotocore", "paramiko",
                  "wsgidav", "cheroot"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _load(args: argparse.Namespace) -> Config:
    if not getattr(args, "config", None):
        raise UsageError("--config FILE is required")
    return load_config(args.config, data_dir=getattr(args, "data_dir", None))


# -- serve --------------------------------------------------------------------------------
def _serve_dav(config: Config, announce: bool = True) -> Any:
    from fedgate.federation import Federation
    from fedgate.store import open_store
    from gateway.app import build_app
    from gateway.server import make_server, start_in_thread

    store = open_store(config.state)
    fed = Federation(config, store)
    fed.start_prober()
    server = make_server(config, build_app(fed))
    start_in_thread(server)
    if announce:
        host, port = config.listen.webdav
        scheme = "https" if config.listen.tls_cert else "http"
        log.info("WebDAV gateway on %s://%s:%d/", scheme, host, port)
    return server


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def _staging_available() -> bool:
    try:
        import staging.app  # noqa: F401
    except ImportError:
        return False
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    password = None
    if _staging_available():
        # the staging role takes SIGTERM/SIGINT in a dedicated thread; block them
        # before the gateway starts its threads so that they inherit the mask
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    if args.config:
        config = load_config(args.config, data_dir=args.data_dir)
    else:
        config, password = demo_config(Path(args.data_dir or "fedgate-data"))
    server = _serve_dav(config)
    if _staging_available() and config.query_enabled:
        import staging.app  # noqa: F401  (loaded before the collector is tuned)
    tune_gc()
    wh, wp = config.listen.webdav
    sh, sp = config.listen.staging
    names = ", ".join(s["name"] for s in config.sites)
    lines = [f"fedgate {__version__}: {config.name}",
             f"  WebDAV:  http://{wh}:{wp}/   (sites: {names})"]
    if _staging_available() and config.query_enabled:
        lines.append(f"  Staging: http://{sh}:{sp}/api/v1/")
    if not args.config:
        lines.append(f"  data:    {config.data_dir}")
        if password:
            lines.append(f"  user:    demo   password: {password}   (shown once; hash kept "
                         "in the data dir)")
        else:
            lines.append("  user:    demo   (password shown at first start; delete "
                         "demo-user.hash in the data dir to make a new one)")
        lines.append(f"  try:     cadaver http://{wh}:{wp}/site-a/")
    print("\n".join(lines), flush=True)
    try:
        if _staging_available() and config.query_enabled:
            from staging.app import run_staging

            run_staging(config, workers=True)
        else:
            _wait_for_signal()
    finally:
        server.stop()
    return 0


def cmd_serve_dav(args: argparse.Namespace) -> int:
    config = _load(args)
    server = _serve_dav(config)
    tune_gc()
    try:
        _wait_for_signal()
    finally:
        server.stop()
    return 0


def cmd_serve_staging(args: argparse.Namespace) -> int:
    config = _load(args)
    if not _staging_available():
        raise UsageError("the staging service is not installed in this build")
    from staging.app import run_staging

    tune_gc()
    run_staging(config, workers=False)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    config = _load(args)
    if not _staging_available():
        raise UsageError("the staging service is not installed in this build")
    from staging.worker import run_worker

    tune_gc()
    run_worker(config)
    return 0


# -- check --------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    from adaptors import create_adaptor, errors
    from adaptors.base import AdaptorContext
    from fedgate.secrets import SecretBox
    from fedgate.store import open_store

    print(f"config: ok ({len(config.sites)} sites, {len(config.users)} users)")
    for w in config.warnings:
        print(f"warning: {w}")
    store = open_store(config.state)
    box = SecretBox.for_data_dir(config.data_dir, config.secret_key)
    ctx = AdaptorContext(config.data_dir, box.encrypt, box.decrypt, store)
    failed = 0
    for opts in config.sites:
        adaptor = create_adaptor(opts, ctx)
        mode = "read-only" if adaptor.read_only else "read/write"
        try:
            adaptor.probe()
            extra = ""
            key_status = getattr(adaptor, "key_status", None)
            if callable(key_status):
                extra = f", key: {key_status()}"
            print(f"site {opts['name']} ({opts['type']}): ok, {mode}{extra}")
        except errors.AdaptorError as exc:
            failed += 1
            print(f"site {opts['name']} ({opts['type']}): FAILED: {exc.message}")
        finally:
            adaptor.close()
    store.close()
    return 1 if failed else 0


# -- keys, passwords, tokens --------------------------------------------------------------
def cmd_hash_password(args: argparse.Namespace) -> int:
    from fedgate.auth import hash_password

    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if pw != getpass.getpass("Again: "):
            raise UsageError("passwords do not match")
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    if not pw:
        raise UsageError("empty password")
    print(hash_password(pw))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from fedgate.auth import generate_keypair

    priv, pub = generate_keypair(Path(args.out), args.type)
    print(f"private key: {priv} (keep it secret)\npublic key:  {pub}")
    print("public_key for the config (base64 PEM): " +
          __import__("base64").b64encode(pub.read_bytes()).decode())
    return 0


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    unit = text[-1:] if text[-1:] in _TTL_UNITS else "s"
    number = text[:-1] if text[-1:] in _TTL_UNITS else text
    if not number.isdigit() or int(number) <= 0:
        raise UsageError(f"bad --ttl {text!r} (examples: 3600, 30m, 1h, 7d)")
    return int(number) * _TTL_UNITS[unit]


def cmd_token(args: argparse.Namespace) -> int:
    from fedgate.auth import mint_token

    try:
        key = Path(args.key).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --key {args.key}: {exc.strerror}") from exc
    try:
        print(mint_token(key, args.email, parse_ttl(args.ttl), args.aud, args.scope, args.iss))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot use --key {args.key}: {exc}") from exc
    return 0


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--log-level", default=os.environ.get("FEDGATE_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    common.add_argument("--log-format", default="text", choices=["text", "json"])
    p = _Parser(prog="fedgate", parents=[common],
                description="Data-federation gateway: WebDAV + staging API over many sites.")
    p.add_argument("--version", action="version", version=f"fedgate {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, parents=[common])
        sp.set_defaults(func=func)
        return sp

    sp = add("serve", cmd_serve, "run gateway, staging API and workers (demo without --config)")
    sp.add_argument("--config")
    sp.add_argument("--data-dir")
    for name, func, help_ in (("serve-dav", cmd_serve_dav, "run the WebDAV gateway only"),
                              ("serve-staging", cmd_serve_staging, "run the staging API only"),
                              ("worker", cmd_worker, "run transfer workers only"),
                              ("check", cmd_check, "validate the config and probe every site")):
        sp = add(name, func, help_)
        sp.add_argument("--config", required=True)
        sp.add_argument("--data-dir")
    add("hash-password", cmd_hash_password, "hash a password for users[].password_hash")
    sp = add("keygen", cmd_keygen, "write a key pair for a JWT user")
    sp.add_argument("--out", required=True)
    sp.add_argument("--type", default="ed25519", choices=["ed25519", "rsa", "ec"])
    sp = add("token", cmd_token, "mint a JWT the gateway accepts")
    sp.add_argument("--key", required=True, help="private key PEM")
    sp.add_argument("--email", required=True)
    sp.add_argument("--ttl", default="1h")
    sp.add_argument("--aud")
    sp.add_argument("--scope", help='e.g. "storage.read:/site-a storage.modify:/site-b/in"')
    sp.add_argument("--iss")
    try:
        from staging.client import add_client_commands
    except ImportError:
        pass
    else:
        add_client_commands(sub)
    return p


#: MiB of free memory a malloc arena keeps before returning it to the kernel
#: (environment FEDGATE_MALLOC_TRIM_MIB overrides)
TRIM_THRESHOLD_MIB = 16


def _trim_threshold_mib() -> int:
    """FEDGATE_MALLOC_TRIM_MIB when it is a whole number >= 0, else the default
    (with a note on stderr: logging is not set up yet)."""
    raw = os.environ.get("FEDGATE_MALLOC_TRIM_MIB")
    if raw is None:
        return TRIM_THRESHOLD_MIB
    if raw.strip().isdigit():
        return int(raw)
    print(f"fedgate: FEDGATE_MALLOC_TRIM_MIB must be a whole number of MiB; using "
          f"{TRIM_THRESHOLD_MIB}", file=sys.stderr)
    return TRIM_THRESHOLD_MIB


def tune_malloc() -> None:
    """Keep large buffers out of glibc's heap arenas.  Transfers allocate and
    free 1-8 MiB blocks from many threads; with glibc's dynamic mmap threshold
    those land in per-thread arenas that never shrink, and RSS grows by hundreds
    of MiB over a 1 GiB transfer.  A fixed 4 MiB threshold maps each big block
    and returns it to the kernel when freed."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        libc.mallopt(m_mmap_threshold, 4 * 1024 * 1024)
        libc.mallopt(m_arena_max, 4)
        # a fixed mmap threshold leaves the trim threshold at 128 KiB: every freed
        # 1 MiB block went back to the kernel and the next one page-faulted in
        # again (half the CPU of a PUT).  Up to 16 MiB per arena stays mapped.
        libc.mallopt(m_trim_threshold, _trim_threshold_mib() * 1024 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


#: allocations between young-generation collections in server processes
#: (CPython's default is 700)
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """For a server process once it is set up: move everything alive now
    (modules, botocore's service models, the config) out of the collector's
    scans, and collect the young generation less often.  A 10,000-entry
    listing allocates ~100,000 objects; with the defaults each one paid for
    full scans of every loaded module (PROPFIND of 10,000 S3 keys: median
    0.107 s -> 0.095 s, worst 0.19 -> 0.12 s).  Garbage is still collected:
    reference counting frees almost everything, the collector only cycles."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def main(argv: list[str] | None = None) -> int:
    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"fedgate: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"fedgate: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
