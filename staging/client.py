"""``fedgate find | ls | cp | jobs | cancel``: a small client of the staging API.

The lead's ``fedgate/cli.py`` calls :func:`add_client_commands`; every
subcommand sets ``func(args) -> int`` (0 ok, 1 failed, 2 bad usage).
Connection: ``--url`` / ``FEDGATE_URL`` (default http://127.0.0.1:8002),
``--token`` / ``FEDGATE_TOKEN`` (sent as ``x-access-token``), or ``--user`` /
``FEDGATE_USER`` with ``FEDGATE_PASSWORD`` (prompted when unset).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")


class ClientError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, url: str, token: str | None = None, user: str | None = None,
                 password: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Accept": "application/json", "User-Agent": "fedgate-client/1"}
        if token:
            self.headers["x-access-token"] = token
        elif user:
            cred = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = f"Basic {cred}"
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[Any, dict[str, str]]:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = path if path.startswith("http") else self.url + path
        req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
                hdrs = {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)["error"]
                msg = f"{err['message']} ({err['code']}, HTTP {exc.code})"
            except (ValueError, KeyError, TypeError):
                msg = f"HTTP {exc.code} {exc.reason}"
            raise ClientError(msg, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach {self.url}: {reason}") from None
        return (json.loads(raw) if raw else None), hdrs

    def get(self, path: str) -> Any:
        return self.request("GET", path)[0]


def _client(args: argparse.Namespace) -> Client:
    url = args.url or os.environ.get("FEDGATE_URL") or "http://127.0.0.1:8002"
    token = args.token or os.environ.get("FEDGATE_TOKEN")
    user = args.user or os.environ.get("FEDGATE_USER")
    password = os.environ.get("FEDGATE_PASSWORD")
    if not token and user and password is None:
        password = getpass.getpass(f"password for {user}: ")
    return Client(url, token=token, user=user, password=password)


def _human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    total, done = job.get("bytes_total"), job.get("bytes_done") or 0
    frac = (done / total) if total else (1.0 if job["status"] == "succeeded" else 0.0)
    frac = max(0.0, min(1.0, frac))
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    files = ""
    if job.get("files_total") and job["files_total"] > 1:
        files = f" {job.get('files_done', 0)}/{job['files_total']} files"
    rate = f" {_human(job.get('rate_bps'))}/s" if job.get("rate_bps") else ""
    return (f"{job['id']} [{bar}] {frac * 100:5.1f}% {_human(done)}/{_human(total)}"
            f"{rate}{files} {job['status']}")


def follow(client: Client, job_id: str, interval: float = 0.5) -> dict[str, Any]:
    """Poll a job until it ends, drawing a progress bar on stderr."""
    tty = sys.stderr.isatty()
    while True:
        job = client.get(f"/api/v1/copy/{urllib.parse.quote(job_id, safe='')}")
        if tty:
            sys.stderr.write("\r" + progress_line(job) + "\x1b[K")
            sys.stderr.flush()
        if job["status"] in TERMINAL:
            sys.stderr.write("\n" if tty else progress_line(job) + "\n")
            return dict(job)
        time.sleep(interval)


def _print_entry(e: dict[str, Any]) -> None:
    kind = "d" if e["type"] == "directory" else "-"
    stale = " (stale)" if e.get("stale") else ""
    print(f"{kind} {e['size']:>14} {e.get('lastmod') or '-':31} {e['path']}{stale}")


# -- commands ------------------------------------------------------------------------------
def cmd_find(args: argparse.Namespace) -> int:
    c = _client(args)
    name = args.name
    if any(ch in name for ch in "*?["):
        path = "/api/v1/find?" + urllib.parse.urlencode({"glob": name})
    else:
        path = f"/api/v1/find/{urllib.parse.quote(name, safe='')}"
    try:
        entries = c.get(path)
    except ClientError as exc:
        if exc.status == 404:
            print(f"fedgate: {name}: not found", file=sys.stderr)
            return 1
        raise
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for e in entries:
            _print_entry(e)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    c = _client(args)
    site, sep, path = args.target.partition(":")
    if not sep or not site:
        print("fedgate: ls: expected SITE:/PATH", file=sys.stderr)
        return 2
    path = "/" + path.strip("/") if path.strip("/") else "/"
    query = {"site": site, "limit": "10000"}
    if path != "/":
        query["prefix"] = path
    url: str | None = "/api/v1/list?" + urllib.parse.urlencode(query)
    entries: list[dict[str, Any]] = []
    while url:
        page, headers = c.request("GET", url)
        for group in page.values():
            entries += group
        link = headers.get("link", "")
        url = link.split(";")[0].strip().strip("<>") if 'rel="next"' in link else None
    parent = path.rstrip("/") or "/"
    children = [e for e in entries
                if (e["filename"].rsplit("/", 1)[0] or "/") == parent]
    for e in sorted(children, key=lambda e: e["filename"]):
        _print_entry(e)
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    c = _client(args)
    req: dict[str, Any] = {"from": args.src, "to": args.dst}
    if args.id:
        req["id"] = args.id
    if args.recursive:
        req["recursive"] = True
    if args.move:
        req["move"] = True
    if args.no_overwrite:
        req["overwrite"] = False
    if args.webhook:
        req["webhook"] = args.webhook
    accepted, _ = c.request("POST", "/api/v1/copy", [req])
    job_id = accepted[0]["id"]
    if not args.wait:
        print(job_id)
        return 0
    job = follow(c, job_id)
    if job["status"] != "succeeded":
        err = job.get("error") or {}
        print(f"fedgate: copy {job_id} {job['status']}: {err.get('message', '')}",
              file=sys.stderr)
        return 1
    print(job_id)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    c = _client(args)
    if args.id:
        if args.follow:
            job = follow(c, args.id)
        else:
            job = c.get(f"/api/v1/copy/{urllib.parse.quote(args.id, safe='')}")
        print(json.dumps(job, indent=2))
        return 0 if job["status"] != "failed" else 1
    query = {"limit": str(args.limit)}
    if args.status:
        query["status"] = args.status
    jobs = c.get("/api/v1/copy?" + urllib.parse.urlencode(query))
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    for j in jobs:
        print(f"{j['id']:38} {j['status']:10} {_human(j.get('bytes_done')):>10} "
              f"{j['from']} -> {j['to']}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    c = _client(args)
    job = c.request("DELETE", f"/api/v1/copy/{urllib.parse.quote(args.id, safe='')}")[0]
    print(f"{job['id']} {job['status']}" + (" (stopping)" if job["status"] == "running"
                                             else ""))
    return 0


def _wrap(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except ClientError as exc:
            print(f"fedgate: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return run


def add_client_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``find``, ``ls``, ``cp``, ``jobs`` and ``cancel`` to a CLI."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("staging API connection")
    g.add_argument("--url", help="staging API base URL (env FEDGATE_URL)")
    g.add_argument("--token", help="JWT sent as x-access-token (env FEDGATE_TOKEN)")
    g.add_argument("--user", help="basic-auth user (env FEDGATE_USER; password from "
                   "FEDGATE_PASSWORD or a prompt)")

    p = subparsers.add_parser("find", parents=[common], help="where a file is, on every site")
    p.add_argument("name", help="base name, or a glob such as '*.simg'")
    p.add_argument("--json", action="store_true", help="print the location entries as JSON")
    p.set_defaults(func=_wrap(cmd_find))

    p = subparsers.add_parser("ls", parents=[common], help="list SITE:/PATH (from the "
                              "catalogue)")
    p.add_argument("target", metavar="SITE:/PATH")
    p.set_defaults(func=_wrap(cmd_ls))

    p = subparsers.add_parser("cp", parents=[common], help="copy between sites (a job)")
    p.add_argument("src", metavar="SRC", help="SITE:/PATH")
    p.add_argument("dst", metavar="DST", help="SITE:/PATH")
    p.add_argument("--wait", action="store_true", help="wait, with a progress bar")
    p.add_argument("-r", "--recursive", action="store_true", help="copy a directory tree")
    p.add_argument("--move", action="store_true", help="delete the source when verified")
    p.add_argument("--no-overwrite", action="store_true", help="fail if the target exists")
    p.add_argument("--webhook", help="URL to notify when the job ends")
    p.add_argument("--id", help="job id (idempotent resubmission)")
    p.set_defaults(func=_wrap(cmd_cp))

    p = subparsers.add_parser("jobs", parents=[common], help="list jobs, or show one")
    p.add_argument("id", nargs="?", help="job id")
    p.add_argument("--follow", action="store_true", help="follow a job with a progress bar")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed",
                                        "cancelled"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_wrap(cmd_jobs))

    p = subparsers.add_parser("cancel", parents=[common], help="cancel a job")
    p.add_argument("id", help="job id")
    p.set_defaults(func=_wrap(cmd_cancel))
