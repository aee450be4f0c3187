"""The gridftp adaptor against real globus-gridftp-servers (ftp:// and gsiftp://)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adaptors import create_adaptor, errors
from adaptors.base import AdaptorContext, stream_copy
from tests.adaptors.contract import AdaptorContract


def _raw_listing(adaptor):
    def listing(path: str) -> list[str]:
        folder = urllib.parse.unquote(urllib.parse.urlsplit(adaptor.url(path)).path)
        return os.listdir(folder)
    return listing


@pytest.fixture
def ftp_adaptor(gridftp_site, tmp_path: Path):
    a = create_adaptor(gridftp_site, AdaptorContext(data_dir=tmp_path))
    yield a
    a.close()


@pytest.fixture
def gsi_adaptor(gsiftp_site, tmp_path: Path):
    a = create_adaptor(gsiftp_site, AdaptorContext(data_dir=tmp_path))
    yield a
    a.close()


class TestGridFTPContract(AdaptorContract):
    @pytest.fixture
    def adaptor(self, ftp_adaptor):
        return ftp_adaptor

    @pytest.fixture
    def raw_listing(self, adaptor):
        return _raw_listing(adaptor)


class TestGSIFTPContract(AdaptorContract):
    @pytest.fixture
    def adaptor(self, gsi_adaptor):
        return gsi_adaptor

    @pytest.fixture
    def raw_listing(self, adaptor):
        return _raw_listing(adaptor)


# -- beyond the contract -------------------------------------------------------------


def _io() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = int(v)
    return out


def _fill(adaptor, path: str, size: int) -> None:
    block = os.urandom(1 << 20)
    w = adaptor.open_write(path, size_hint=size)
    for _ in range(size // len(block)):
        w.write(block)
    w.commit()


def test_third_party_copy_verifies_the_asked_checksum(gridftp_server, gridftp_server_b,
                                                      tmp_path):
    """copy_from(checksum=...) verifies with that algorithm on both servers and
    returns the digest, so a staging job need not checksum both ends again;
    an algorithm the servers do not know falls back to copy_checksum (None)."""
    ctx = AdaptorContext(data_dir=tmp_path)
    src = create_adaptor(gridftp_server.site("src"), ctx)
    dst = create_adaptor(gridftp_server_b.site("dst"), ctx)
    data = os.urandom(3 << 20)
    w = src.open_write("/f.bin")
    w.write(data)
    w.commit()
    got = dst.copy_from(src, "/f.bin", "/g.bin", checksum="sha256")
    assert got == hashlib.sha256(data).hexdigest()
    assert dst.copy_from(src, "/f.bin", "/h.bin", checksum="blake3") is None
    assert dst.copy_from(src, "/f.bin", "/i.bin") is None
    for name in ("/g.bin", "/h.bin", "/i.bin"):
        assert dst.stat(name).size == len(data)
        assert dst.checksum(name, "md5") == hashlib.md5(data).hexdigest()


def test_third_party_copy_between_servers(gridftp_server, gridftp_server_b, tmp_path):
    """copy_from moves the data server to server: this process reads and writes
    (almost) nothing, both servers log the transfer, checksums match."""
    ctx = AdaptorContext(data_dir=tmp_path)
    src = create_adaptor(gridftp_server.site("src"), ctx)
    dst = create_adaptor(gridftp_server_b.site("dst"), ctx)
    size = 64 << 20
    _fill(src, "/big.bin", size)
    src_sum = src.checksum("/big.bin", "adler32")
    dst.mkdir("/in")
    before = _io()
    dst.copy_from(src, "/big.bin", "/in/big.bin")
    after = _io()
    moved = (after["rchar"] - before["rchar"]) + (after["wchar"] - before["wchar"])
    assert moved < size // 16, f"{moved} bytes went through this process"
    assert dst.stat("/in/big.bin").size == size
    assert dst.checksum("/in/big.bin", "adler32") == src_sum
    assert dst.checksum("/in/big.bin", "md5") == src.checksum("/big.bin", "md5")
    assert [e.name for e in dst.list("/in")] == ["big.bin"]
    assert sorted(os.listdir(urllib.parse.unquote(urllib.parse.urlsplit(
        dst.url("/in")).path))) == ["big.bin"]  # no temporary file left
    # each server logged its side of the transfer (logs may lag a little)
    deadline = time.monotonic() + 10
    while True:
        sent = gridftp_server.transfer_log.read_text()
        got = gridftp_server_b.transfer_log.read_text()
        ok_sent = re.search(rf"NBYTES={size} .*TYPE=RETR", sent)
        ok_got = re.search(rf"NBYTES={size} .*TYPE=STOR", got)
        if (ok_sent and ok_got) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ok_sent, sent[-500:]
    assert ok_got, got[-500:]
    with pytest.raises(errors.Exists):
        dst.copy_from(src, "/big.bin", "/in/big.bin")
    dst.copy_from(src, "/big.bin", "/in/big.bin", overwrite=True)
    with pytest.raises(errors.NotFound):
        dst.copy_from(src, "/missing", "/in/x")


def test_copy_from_other_kind_is_unsupported(gridftp_site, tmp_path):
    ctx = AdaptorContext(data_dir=tmp_path)
    dst = create_adaptor(gridftp_site, ctx)
    (tmp_path / "local").mkdir()
    local = create_adaptor({"name": "l", "type": "local", "path": str(tmp_path / "local")}, ctx)
    (tmp_path / "local" / "f").write_bytes(b"data")
    with pytest.raises(errors.Unsupported):
        dst.copy_from(local, "/f", "/f")
    # the caller's fallback
    assert stream_copy(local, "/f", dst, "/f") == 4
    assert dst.stat("/f").size == 4


def test_gsi_third_party_copy(gsiftp_server, tmp_path):
    ctx = AdaptorContext(data_dir=tmp_path)
    a = create_adaptor(gsiftp_server.site("a"), ctx)
    b = create_adaptor(gsiftp_server.site("b"), ctx)
    _fill(a, "/f", 4 << 20)
    b.copy_from(a, "/f", "/g")
    assert b.checksum("/g", "adler32") == a.checksum("/f", "adler32")


def test_expired_proxy_is_unavailable(gsiftp_server, gridftp_server, gridftp_pki, tmp_path):
    ctx = AdaptorContext(data_dir=tmp_path)
    expired = gridftp_pki.make_proxy(tmp_path / "x509up_expired", expired=True)
    site = gsiftp_server.site("old")
    site["x509_proxy"] = str(expired)
    bad = create_adaptor(site, ctx)
    other = create_adaptor(gridftp_server.site("fine"), ctx)
    with pytest.raises(errors.Unavailable, match="expired"):
        bad.probe()
    with pytest.raises(errors.Unavailable, match="expired"):
        bad.list("/")
    other.probe()
    assert other.list("/") == []
    good = create_adaptor(gsiftp_server.site("good"), ctx)
    good.probe()
    # renewing the proxy in place makes the site usable again
    gridftp_pki.make_proxy(expired)
    bad.probe()


def test_missing_proxy_is_unavailable(gsiftp_server, tmp_path):
    site = gsiftp_server.site("none")
    site["x509_proxy"] = str(tmp_path / "no-such-proxy")
    a = create_adaptor(site, AdaptorContext(data_dir=tmp_path))
    with pytest.raises(errors.Unavailable, match="proxy"):
        a.probe()


def test_wrong_password_is_unavailable_without_secret(gridftp_server, tmp_path):
    site = gridftp_server.site("pw")
    site["password"] = "wrong-Secret-123"
    a = create_adaptor(site, AdaptorContext(data_dir=tmp_path))
    with pytest.raises(errors.Unavailable) as ei:
        a.probe()
    assert "wrong-Secret-123" not in str(ei.value)
    assert "authentication" in str(ei.value)


def test_down_server_is_unavailable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = create_adaptor({"name": "down", "type": "gridftp", "url": f"ftp://127.0.0.1:{port}/x"},
                       AdaptorContext(data_dir=tmp_path))
    with pytest.raises(errors.Unavailable):
        a.probe()


def test_credentials_never_in_urls(tmp_path):
    a = create_adaptor({"name": "u", "type": "gridftp",
                        "url": "ftp://bob:hunter2@127.0.0.1:2121/data"},
                       AdaptorContext(data_dir=tmp_path))
    assert a.user == "bob"
    assert "hunter2" not in a.url("/x") and "bob" not in a.url("/x")
    assert a.describe() == {"host": "127.0.0.1", "port": 2121, "type": "gridftp",
                            "mount": "/data"}


def test_non_ascii_names_escaped_on_server(ftp_adaptor):
    ftp_adaptor.mkdir("/dß")
    w = ftp_adaptor.open_write("/dß/ü.txt")
    w.write(b"x")
    w.commit()
    assert [e.name for e in ftp_adaptor.list("/dß")] == ["ü.txt"]
    on_disk = urllib.parse.unquote(urllib.parse.urlsplit(ftp_adaptor.url("/")).path)
    assert os.listdir(on_disk) == ["d%C3%9F"]


def test_parallel_threads(ftp_adaptor):
    data = {f"/f{i}": os.urandom(300_000 + i) for i in range(8)}
    for p, d in data.items():
        w = ftp_adaptor.open_write(p)
        w.write(d)
        w.commit()

    def work(p: str) -> bool:
        r = ftp_adaptor.open_read(p)
        try:
            got = b"".join(iter(lambda: r.read(65536), b""))
        finally:
            r.close()
        return got == data[p] and ftp_adaptor.stat(p).size == len(data[p])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, list(data) * 3))


def test_error_text_in_names_does_not_mislead(ftp_adaptor):
    """Errors are classified on the server's reason, not on words in the path."""
    with pytest.raises(errors.NotFound):
        ftp_adaptor.stat("/proxy certificate 530 login incorrect")
    with pytest.raises(errors.NotFound):
        ftp_adaptor.list("/connection refused")


def test_mixed_scheme_copy_copies_or_asks_for_fallback(gsiftp_server, gridftp_server, tmp_path):
    """gsiftp -> ftp: either a server-to-server copy or Unsupported (caller streams)."""
    ctx = AdaptorContext(data_dir=tmp_path)
    src = create_adaptor(gsiftp_server.site("gsi-src"), ctx)
    dst = create_adaptor(gridftp_server.site("ftp-dst"), ctx)
    _fill(src, "/m", 2 << 20)
    try:
        dst.copy_from(src, "/m", "/m")
    except errors.Unsupported as exc:
        print("fallback:", exc)
        stream_copy(src, "/m", dst, "/m")
    assert dst.checksum("/m", "md5") == src.checksum("/m", "md5")
    assert [e.name for e in dst.list("/")] == ["m"]


def test_large_listing(ftp_adaptor, gridftp_server):
    folder = Path(urllib.parse.unquote(urllib.parse.urlsplit(ftp_adaptor.url("/")).path))
    many = folder / "many"
    many.mkdir()
    for i in range(3000):
        (many / f"f{i:04d}").write_bytes(b"x" * (i % 7))
    acc = gridftp_server.account
    for p in [many, *many.iterdir()]:
        os.chown(p, acc.pw_uid, acc.pw_gid)
    entries = {e.name: e for e in ftp_adaptor.list("/many")}
    assert len(entries) == 3000
    assert entries["f0013"].size == 13 % 7 and not entries["f0013"].is_dir


def test_name_escaping_round_trip(tmp_path):
    a = create_adaptor({"name": "e", "type": "gridftp", "url": "ftp://127.0.0.1:2121/d"},
                       AdaptorContext(data_dir=tmp_path))
    for name in ("plain", "per%cent", "ü", "文件-🚀", "a%c3%bcb", "x%C3y"):
        assert a._site_name(a._server_name(name)) == name
    assert a._server_name("ü") == "%C3%BC"
    assert a._site_name("a%c3%bcb") == "a%c3%bcb"  # only what the adaptor writes is decoded


class _Stop(Exception):
    pass


def test_third_party_copy_cancel(gridftp_server, gridftp_server_b, tmp_path):
    """cancel_copies() from another thread stops a server-to-server copy and
    leaves nothing at the target."""
    ctx = AdaptorContext(data_dir=tmp_path)
    src = create_adaptor(gridftp_server.site("csrc"), ctx)
    dst = create_adaptor(gridftp_server_b.site("cdst"), ctx)
    _fill(src, "/big", 512 << 20)
    seen: list[int] = []
    folder = urllib.parse.unquote(urllib.parse.urlsplit(dst.url("/")).path)
    done = threading.Event()

    def cancel_once_data_flows() -> None:
        # a fixed delay raced the copy: on a quiet machine 512 MiB went
        # across before it; cancel as soon as the temporary file exists
        while not done.is_set():
            for n in os.listdir(folder):
                with contextlib.suppress(OSError):
                    if os.path.getsize(os.path.join(folder, n)) > 0:
                        dst.cancel_copies()
                        return
            time.sleep(0.002)

    canceller = threading.Thread(target=cancel_once_data_flows)
    canceller.start()
    try:
        with pytest.raises(errors.AdaptorError, match="cancelled"):
            dst.copy_from(src, "/big", "/big", on_progress=seen.append)
    finally:
        done.set()
        canceller.join()
    assert dst.list("/") == []
    assert os.listdir(folder) == []
    # a progress callback that raises cancels too, and its exception comes back
    def stop(done: int) -> None:
        raise _Stop(done)
    try:
        dst.copy_from(src, "/big", "/big", on_progress=stop)
    except _Stop:
        assert os.listdir(folder) == []
    else:  # finished before the first performance marker
        assert dst.stat("/big").size == 512 << 20


def test_threads_with_ranged_reads_and_adaptor_churn(gridftp_site, tmp_path):
    """Regression: gfal2's seek/pread crashed the process (SIGSEGV) under this
    load; reads at an offset must not use it."""
    def worker(k: int) -> bool:
        ok = True
        for _ in range(15):
            a = create_adaptor(gridftp_site, AdaptorContext(data_dir=tmp_path))
            data = os.urandom(100_000)
            w = a.open_write(f"/f{k}")
            w.write(data)
            w.commit()
            r = a.open_read(f"/f{k}", 10, 1000)
            ok &= r.read() == data[10:1010]
            r.close()
            r = a.open_read(f"/f{k}", 0, 10)
            ok &= r.read() == data[:10]
            r.close()
            a.list("/")
            a.copy(f"/f{k}", f"/c{k}", overwrite=True)
            a.close()
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(worker, range(4)))


@pytest.mark.parametrize("which", ["ftp", "gsi"])
def test_far_ranged_reads(which, ftp_adaptor, gsi_adaptor):
    """Reads from offsets past PARTIAL_GET_MIN_OFFSET (partial GET), to the end
    and bounded, and a missing file."""
    a = ftp_adaptor if which == "ftp" else gsi_adaptor
    data = os.urandom(20 * 1024 * 1024 + 3)
    w = a.open_write("/far")
    w.write(data)
    w.commit()
    for off, ln in [(9 << 20, 1000), (16 << 20, None), (len(data) - 1, None), (9 << 20, 5 << 20)]:
        r = a.open_read("/far", off, ln)
        try:
            got = b"".join(iter(lambda r=r: r.read(1 << 20), b""))
        finally:
            r.close()
        assert got == data[off: None if ln is None else off + ln], (off, ln)
    r = a.open_read("/far", 10 << 20, 100)  # closed before the end
    assert len(r.read(10)) <= 10
    r.close()


def test_listing_while_other_adaptors_commit(gridftp_site, tmp_path):
    """Regression: globus-gridftp-server fails an MLSD with 550 when an entry
    vanishes mid-listing (here: staged uploads renamed onto their targets by
    other adaptors), and gfal2 2.21 then aborted the whole process
    (GLOBUSTHREAD: pthread_mutex_lock() failed ... EINVAL) -- listings now
    run in helper processes.  Every listing must succeed and show no
    temporary file."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(k: int) -> None:
        a = create_adaptor(gridftp_site, AdaptorContext(data_dir=tmp_path))
        i = 0
        try:
            while not stop.is_set():
                w = a.open_write(f"/x{i % 5}")
                w.write(b"%d" % k * 1000)
                w.commit()
                i += 1
        except BaseException as exc:
            failures.append(exc)
        finally:
            a.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    lister = create_adaptor(gridftp_site, AdaptorContext(data_dir=tmp_path))
    try:
        for _ in range(300):
            names = {e.name for e in lister.list("/")}
            assert names <= {f"x{j}" for j in range(5)}, names
    finally:
        stop.set()
        for t in threads:
            t.join()
        lister.close()
    assert not failures, failures
    assert {e.name for e in lister.list("/")} == {f"x{j}" for j in range(5)}


def test_lost_connection_is_retried(gridftp_server, ftp_adaptor, caplog):
    """The server processes behind the adaptor's cached sessions die (as when
    a server restarts or times a session out): the next stat, checksum,
    listing and open for reading see a lost connection, classify it Transient
    and succeed on a new connection."""
    import logging
    import signal

    _fill(ftp_adaptor, "/f", 1 << 20)
    assert ftp_adaptor.stat("/f").size == 1 << 20
    assert [e.name for e in ftp_adaptor.list("/")] == ["f"]
    parent = gridftp_server.proc.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert children, "no server process serves a cached session"
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.3)
    with caplog.at_level(logging.INFO, logger="adaptors.gridftp"):
        assert ftp_adaptor.stat("/f").size == 1 << 20
        assert ftp_adaptor.checksum("/f", "adler32")
        assert [e.name for e in ftp_adaptor.list("/")] == ["f"]
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.3)
    with caplog.at_level(logging.INFO, logger="adaptors.gridftp"):
        r = ftp_adaptor.open_read("/f", 0, 100)
        try:
            assert len(r.read()) == 100
        finally:
            r.close()
    retried = [r.getMessage() for r in caplog.records if "retrying once" in r.getMessage()]
    assert any("connection lost" in m and ": /f;" in m for m in retried), retried
    assert any("connection lost" in m and ": /;" in m for m in retried), retried


def test_upload_whose_server_dies_fails_and_leaves_no_file(gridftp_server, ftp_adaptor):
    """The server process receiving an upload dies mid-stream: write() or
    commit() raises, and abort() removes the temporary file on a new
    connection; the target is untouched."""
    import signal

    _fill(ftp_adaptor, "/t", 1 << 20)
    folder = urllib.parse.unquote(urllib.parse.urlsplit(ftp_adaptor.url("/")).path)
    block = os.urandom(1 << 20)
    w = ftp_adaptor.open_write("/t")
    for _ in range(8):
        w.write(block)
    assert any(n.startswith(".fedgate-tmp-") for n in os.listdir(folder))
    parent = gridftp_server.proc.pid
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    with pytest.raises(errors.AdaptorError):
        for _ in range(64):
            w.write(block)
        w.commit()
    w.abort()
    deadline = time.monotonic() + 10
    while os.listdir(folder) != ["t"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.listdir(folder) == ["t"]
    assert ftp_adaptor.stat("/t").size == 1 << 20
