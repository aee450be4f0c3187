"""Helper process of the gridftp adaptor: gfal2 directory listings (MLSD).

Why a separate process: gfal2's GridFTP plugin (2.21, Debian bookworm) builds
its MLSD reader by registering the MLSD and then reading the first block of
the listing *inside the reader's constructor*.  When that first read fails
-- globus-gridftp-server fails an MLSD with 550 whenever an entry vanishes
between its readdir and its stat, i.e. whenever another client renames or
deletes a file in the folder being listed -- the constructor throws, C++
destroys the half-built reader, and its request state (mutex included) is
freed while the MLSD is still registered.  Globus then delivers the MLSD's
completion on its callback thread into the freed state:
``GLOBUSTHREAD: pthread_mutex_lock() failed ... EINVAL`` and ``abort()``.
That kills whatever process ran the listing, single-threaded or not, so the
gateway runs listings here; the adaptor restarts a helper that died and
retries the listing once.

Protocol (one request at a time, one JSON document per line): the first line
on stdin is the setup ``{"prefix", "scheme", "user", "password", "proxy"}``
(secrets travel on the pipe only, never in argv or the environment); then
each line ``{"url": ...}`` is answered on stdout (the pipe; anything C code
prints to file descriptor 1 goes to /dev/null instead) with
``{"ok": [[name, st_mode, st_size, st_mtime], ...]}`` or
``{"err": [errno, message], "phase": "open"|"read"}``.  After a failure in
the read phase gfal2 may still hold a dangling request, so the helper exits
after answering.  End of stdin (the adaptor closed or died) ends it.

Standalone on purpose: it imports nothing from the project.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_OUT: Any = None  # the reply channel: the original stdout


def _reply(doc: dict[str, Any]) -> None:
    _OUT.write(json.dumps(doc) + "\n")
    _OUT.flush()


def main() -> int:
    global _OUT
    # Globus writes its fatal errors to stdout: replies keep the pipe, fd 1
    # (whatever C code prints) goes to /dev/null
    _OUT = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process

    import gfal2

    line = sys.stdin.readline()
    if not line:
        return 0
    setup = json.loads(line)
    ctx = gfal2.creat_context()
    prefix = setup["prefix"]
    if setup.get("scheme") == "gsiftp":
        ctx.cred_set(prefix, ctx.cred_new("X509_CERT", setup["proxy"]))
        ctx.cred_set(prefix, ctx.cred_new("X509_KEY", setup["proxy"]))
    elif setup.get("user"):
        ctx.cred_set(prefix, ctx.cred_new("USER", setup["user"]))
        ctx.cred_set(prefix, ctx.cred_new("PASSWORD", setup.get("password") or ""))
    del setup, line
    for request in sys.stdin:
        url = json.loads(request)["url"]
        try:
            d = ctx.opendir(url)
        except gfal2.GError as exc:
            _reply({"err": [int(exc.code or 0), str(exc)], "phase": "open"})
            continue
        out: list[list[Any]] = []
        try:
            while True:
                dirent, st = d.readpp()
                if dirent is None:
                    break
                name = dirent.d_name
                if name in (".", ".."):
                    continue
                out.append([name, int(st.st_mode), int(st.st_size), float(st.st_mtime or 0)])
        except gfal2.GError as exc:
            _reply({"err": [int(exc.code or 0), str(exc)], "phase": "read"})
            return 0
        finally:
            del d
        _reply({"ok": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
