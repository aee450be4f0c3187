"""The transfer engine directly: block CRCs, read-back verification, retries of
transient faults (a local site with injected faults), cancel and tree resume."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import pytest

from adaptors import errors
from adaptors.base import BLOCK_SIZE, Capability
from adaptors.local import LocalAdaptor
from fedgate.config import Config
from fedgate.store.sqlite import SQLiteStore
from staging.transfer import BlockCRC, JobControl, TransferEngine


class FlakyLocal(LocalAdaptor):
    """A real local site whose first ``fail`` reads raise Transient."""

    def __init__(self, *a, fail: int = 0, **kw) -> None:
        super().__init__(*a, **kw)
        self.fail = fail
        self.lock = threading.Lock()

    def open_read(self, path, offset=0, length=None):
        with self.lock:
            if self.fail > 0:
                self.fail -= 1
                raise errors.Transient("connection reset", path)
        return super().open_read(path, offset, length)


class Fed:
    def __init__(self, **sites) -> None:
        self.sites = sites

    def get(self, name):
        return self.sites[name]


def _site(tmp_path, name, cls=LocalAdaptor, **kw):
    (tmp_path / name).mkdir(exist_ok=True)
    return cls(name, {"name": name, "type": "local", "path": str(tmp_path / name)}, None, **kw)


def _job(store, **kw):
    doc = {"id": "j", "user": "u", "status": "queued", "created_at": 1.0, "from": "a:/f",
           "to": "b:/f", "move": False, "overwrite": True, "recursive": False,
           "checksum_alg": None, "webhook": None, **kw}
    store.job_insert(doc)
    return store.job_claim("w", 30)


def test_block_crc_ignores_chunking():
    data = os.urandom(3 * BLOCK_SIZE + 17)
    one, many = BlockCRC(), BlockCRC()
    one.update(data)
    for i in range(0, len(data), 70_001):
        many.update(data[i:i + 70_001])
    assert one.finish() == many.finish() == [
        zlib.crc32(data[i:i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE)]


def test_verify_detects_a_different_target(tmp_path):
    b = _site(tmp_path, "b")
    data = os.urandom(2 * BLOCK_SIZE + 5)
    (tmp_path / "b" / "t").write_bytes(data)
    crc = BlockCRC()
    crc.update(data[:-1] + b"X")
    engine = TransferEngine(Config(), Fed(b=b))
    ctl = JobControl({"id": "x"}, "w", None, 30)  # type: ignore[arg-type]
    with pytest.raises(errors.ChecksumMismatch):
        engine._verify_blocks(ctl, b, "/t", len(data), crc.finish())
    assert not (tmp_path / "b" / "t").exists()
    (tmp_path / "b" / "t").write_bytes(data)
    good = BlockCRC()
    good.update(data)
    engine._verify_blocks(ctl, b, "/t", len(data), good.finish())


def test_transient_faults_are_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGATE_TRANSFER_BACKOFF_S", "0.01")
    a = _site(tmp_path, "a", FlakyLocal, fail=2)
    b = _site(tmp_path, "b")
    (tmp_path / "a" / "f").write_bytes(os.urandom(100_000))
    store = SQLiteStore(tmp_path / "s.db")
    cfg = Config()
    cfg.transfers.retries = 3
    job = _job(store)
    ctl = JobControl(job, "w", store, 30)
    status, fields = TransferEngine(cfg, Fed(a=a, b=b)).run(job, ctl)
    assert status == "succeeded", fields
    assert ctl.attempts == 3  # the first try and two retries
    assert (tmp_path / "b" / "f").read_bytes() == (tmp_path / "a" / "f").read_bytes()
    # more faults than retries: failed with the transient error, nothing at the target
    a.fail = 10
    store.job_insert({**job, "id": "j2", "to": "b:/g", "status": "queued"})
    job2 = store.job_claim("w", 30)
    status, fields = TransferEngine(cfg, Fed(a=a, b=b)).run(job2, JobControl(job2, "w", store,
                                                                             30))
    assert status == "failed" and fields["error"]["code"] == "transient"
    assert not (tmp_path / "b" / "g").exists()
    store.close()


def test_tree_resumes_after_last_finished_file(tmp_path):
    a, b = _site(tmp_path, "a"), _site(tmp_path, "b")
    (tmp_path / "a" / "t").mkdir()
    for n in ("1", "2", "3"):
        (tmp_path / "a" / "t" / n).write_text(n)
    store = SQLiteStore(tmp_path / "s.db")
    # a previous attempt finished "1" and created the target tree
    (tmp_path / "b" / "t").mkdir()
    (tmp_path / "b" / "t" / "1").write_text("1")
    job = _job(store, **{"from": "a:/t", "to": "b:/t", "recursive": True,
                         "overwrite": False, "target_checked": True,
                         "target_created": True, "resume_after": "1"})
    ctl = JobControl(job, "w", store, 30)
    status, fields = TransferEngine(Config(), Fed(a=a, b=b)).run(job, ctl)
    assert status == "succeeded", fields
    assert ctl.files_done == 3 and ctl.bytes_done == 3
    assert sorted(p.name for p in (tmp_path / "b" / "t").iterdir()) == ["1", "2", "3"]
    assert store.job_get("j")["resume_after"] == "3"
    store.close()


def test_cancel_of_a_tree_removes_what_it_made(tmp_path):
    a, b = _site(tmp_path, "a"), _site(tmp_path, "b")
    (tmp_path / "a" / "t").mkdir()
    for n in range(5):
        (tmp_path / "a" / "t" / str(n)).write_bytes(b"x" * 1000)
    store = SQLiteStore(tmp_path / "s.db")
    job = _job(store, **{"from": "a:/t", "to": "b:/t", "recursive": True})
    ctl = JobControl(job, "w", store, 30)
    calls = {"n": 0}
    real = ctl.persist

    def persist(fields):  # cancel after the second file
        real(fields)
        calls["n"] += 1
        if calls["n"] == 3:
            ctl.request_stop("cancelled")
            ctl.check()

    ctl.persist = persist  # type: ignore[method-assign]
    status, _ = TransferEngine(Config(), Fed(a=a, b=b)).run(job, ctl)
    assert status == "cancelled"
    assert not (tmp_path / "b" / "t").exists()
    store.close()


def test_cancel_stops_a_gridftp_third_party_job(gridftp_server, gridftp_server_b, tmp_path):
    """A GridFTP-to-GridFTP job runs server to server; a cancel stops it within
    seconds (not when the copy would have ended), status cancelled, nothing left
    at the target."""
    from adaptors import create_adaptor
    from adaptors.base import AdaptorContext

    ctx = AdaptorContext(data_dir=tmp_path)
    a = create_adaptor(gridftp_server.site("ja"), ctx)
    b = create_adaptor(gridftp_server_b.site("jb"), ctx)
    def local(adaptor) -> Path:
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(adaptor.url("/")).path))

    with open(local(a) / "f", "wb") as fh:  # 8 GiB, sparse: the servers need seconds
        fh.truncate(8 << 30)
    os.chmod(local(a) / "f", 0o644)
    folder = local(b)
    store = SQLiteStore(tmp_path / "s.db")
    job = _job(store)
    ctl = JobControl(job, "w", store, 30)
    stopped_at: list[float] = []

    def cancel_once_data_flows() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if any(p.stat().st_size > 0 for p in folder.iterdir()):
                stopped_at.append(time.monotonic())
                ctl.request_stop("cancelled")
                return
            time.sleep(0.002)

    t = threading.Thread(target=cancel_once_data_flows)
    t.start()
    try:
        status, fields = TransferEngine(Config(), Fed(a=a, b=b)).run(job, ctl)
    finally:
        t.join()
    assert stopped_at, "the copy never started"
    assert status == "cancelled", fields
    assert time.monotonic() - stopped_at[0] < 5
    assert list(folder.iterdir()) == []
    store.close()
    a.close()
    b.close()


class SilentChecksumLocal(LocalAdaptor):
    """A local site that says it has server checksums but gives none (an SFTP
    account without commands looks like this); ``corrupt`` flips a byte of
    what is written, as a faulty target would."""

    capabilities = LocalAdaptor.capabilities | Capability.CHECKSUM

    def __init__(self, *a, corrupt: bool = False, **kw) -> None:
        super().__init__(*a, **kw)
        self.corrupt = corrupt
        self.asked = 0

    def checksum(self, path, algorithm):
        self.asked += 1
        return None

    def open_write(self, path, size_hint=None):
        w = super().open_write(path, size_hint)
        if self.corrupt:
            write = w.write

            def bad(data):
                return write(bytes([data[0] ^ 1]) + bytes(data[1:]) if data else data)
            w.write = bad  # type: ignore[method-assign]
        return w


@pytest.mark.parametrize("corrupt", [False, True])
def test_target_without_the_checksums_it_offers_is_read_and_hashed(tmp_path, monkeypatch,
                                                                     corrupt):
    """No block CRCs are kept for a target with server checksums; when it gives
    none after all, the target is read and hashed whole: a good copy succeeds,
    a corrupted one fails and is removed."""
    monkeypatch.setenv("FEDGATE_TRANSFER_BACKOFF_S", "0.01")
    a = _site(tmp_path, "a")
    b = _site(tmp_path, "b", SilentChecksumLocal, corrupt=corrupt)
    data = os.urandom(3 * BLOCK_SIZE + 11)
    (tmp_path / "a" / "f").write_bytes(data)
    store = SQLiteStore(tmp_path / "s.db")
    cfg = Config()
    cfg.transfers.retries = 1
    job = _job(store)
    status, fields = TransferEngine(cfg, Fed(a=a, b=b)).run(job, JobControl(job, "w", store, 30))
    assert b.asked >= 1
    if corrupt:
        assert status == "failed" and fields["error"]["code"] == "checksum_mismatch", fields
        assert not (tmp_path / "b" / "f").exists()
    else:
        assert status == "succeeded", fields
        assert (tmp_path / "b" / "f").read_bytes() == data
        assert fields["checksum"] == {"sha256": hashlib.sha256(data).hexdigest()}
    store.close()
