"""The ONE adaptor contract suite.

Every adaptor's test module subclasses :class:`AdaptorContract` and provides a
fixture ``adaptor`` yielding an adaptor whose site root is an existing, empty,
writable directory (a fresh one per test), and ``raw_listing`` returning the
names the back end really holds under a site path (to prove no temporary
object stays behind).  The suite is the same for every back end: do not
special-case an adaptor here; declare a capability instead.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta

import pytest

from adaptors import errors
from adaptors.base import Adaptor, Capability, Entry, stream_copy


def put(adaptor: Adaptor, path: str, data: bytes, chunk: int = 65536) -> None:
    w = adaptor.open_write(path, size_hint=len(data))
    for i in range(0, len(data), chunk):
        w.write(data[i : i + chunk])
    w.commit()


def get(adaptor: Adaptor, path: str, offset: int = 0, length: int | None = None) -> bytes:
    r = adaptor.open_read(path, offset, length)
    try:
        parts = []
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            parts.append(b)
        return b"".join(parts)
    finally:
        r.close()


def names(entries: list[Entry]) -> set[str]:
    return {e.name for e in entries}


class AdaptorContract:
    """Behaviour every adaptor must show.  Subclasses provide fixtures."""

    # -- listing and stat ----------------------------------------------------
    def test_root_is_empty_directory(self, adaptor: Adaptor) -> None:
        assert adaptor.stat("/").is_dir
        assert adaptor.list("/") == []

    def test_list_and_stat(self, adaptor: Adaptor) -> None:
        adaptor.mkdir("/d")
        put(adaptor, "/d/a.txt", b"hello")
        put(adaptor, "/d/b.bin", b"x" * 1000)
        adaptor.mkdir("/d/sub")
        entries = {e.name: e for e in adaptor.list("/d")}
        assert set(entries) == {"a.txt", "b.bin", "sub"}
        assert entries["a.txt"].size == 5 and not entries["a.txt"].is_dir
        assert entries["b.bin"].size == 1000
        assert entries["sub"].is_dir
        st = adaptor.stat("/d/a.txt")
        assert st.name == "a.txt" and st.size == 5 and not st.is_dir
        assert adaptor.stat("/d").is_dir and adaptor.stat("/d").name == "d"

    def test_entry_fields_normalised(self, adaptor: Adaptor) -> None:
        before = datetime.now(UTC) - timedelta(minutes=5)
        put(adaptor, "/f", b"abc")
        st = adaptor.stat("/f")
        assert st.mtime is not None and st.mtime.tzinfo is not None
        assert st.mtime.utcoffset() == timedelta(0)
        assert before <= st.mtime <= datetime.now(UTC) + timedelta(minutes=5)
        assert st.etag is None or ('"' not in st.etag and st.etag)
        listed = {e.name: e for e in adaptor.list("/")}["f"]
        assert listed.size == st.size and listed.is_dir == st.is_dir

    def test_etag_changes_with_content(self, adaptor: Adaptor) -> None:
        put(adaptor, "/f", b"one")
        e1 = adaptor.stat("/f").etag
        put(adaptor, "/f", b"two-two")
        e2 = adaptor.stat("/f").etag
        if e1 is not None:
            assert e1 != e2

    def test_stat_missing(self, adaptor: Adaptor) -> None:
        with pytest.raises(errors.NotFound):
            adaptor.stat("/nope")
        with pytest.raises(errors.NotFound):
            adaptor.stat("/nope/deeper")

    def test_list_missing_and_file(self, adaptor: Adaptor) -> None:
        with pytest.raises(errors.NotFound):
            adaptor.list("/nope")
        put(adaptor, "/f", b"1")
        with pytest.raises((errors.NotADirectory, errors.NotFound)):
            adaptor.list("/f")

    # -- reading -------------------------------------------------------------
    def test_read_whole_and_ranges(self, adaptor: Adaptor) -> None:
        data = os.urandom(3 * 1024 * 1024 + 17)
        put(adaptor, "/r", data)
        assert get(adaptor, "/r") == data
        assert get(adaptor, "/r", 10, 100) == data[10:110]
        assert get(adaptor, "/r", 1024 * 1024 - 3, 7) == data[1024 * 1024 - 3 : 1024 * 1024 + 4]
        assert get(adaptor, "/r", len(data) - 5) == data[-5:]
        assert get(adaptor, "/r", 0, 1) == data[:1]

    def test_read_missing(self, adaptor: Adaptor) -> None:
        with pytest.raises(errors.NotFound):
            get(adaptor, "/missing")

    def test_read_directory(self, adaptor: Adaptor) -> None:
        adaptor.mkdir("/d")
        with pytest.raises((errors.IsADirectory, errors.NotFound)):
            get(adaptor, "/d")

    def test_empty_file(self, adaptor: Adaptor) -> None:
        w = adaptor.open_write("/empty")
        w.commit()
        assert adaptor.stat("/empty").size == 0
        assert not adaptor.stat("/empty").is_dir
        assert get(adaptor, "/empty") == b""
        assert "empty" in names(adaptor.list("/"))

    # -- writing ---------------------------------------------------------------
    def test_write_invisible_until_commit(self, adaptor: Adaptor, raw_listing) -> None:
        w = adaptor.open_write("/staged")
        w.write(b"partial")
        assert "staged" not in names(adaptor.list("/"))
        w.commit()
        assert get(adaptor, "/staged") == b"partial"
        assert set(raw_listing("/")) == {"staged"}

    def test_abort_keeps_previous_content(self, adaptor: Adaptor, raw_listing) -> None:
        put(adaptor, "/keep", b"original")
        w = adaptor.open_write("/keep")
        w.write(b"new data that must not appear" * 1000)
        w.abort()
        assert get(adaptor, "/keep") == b"original"
        assert names(adaptor.list("/")) == {"keep"}
        assert set(raw_listing("/")) == {"keep"}

    def test_abort_new_file_leaves_nothing(self, adaptor: Adaptor, raw_listing) -> None:
        w = adaptor.open_write("/new")
        w.write(b"x" * 100_000)
        w.abort()
        w.abort()  # idempotent
        with pytest.raises(errors.NotFound):
            adaptor.stat("/new")
        assert list(raw_listing("/")) == []

    def test_write_after_commit_refused(self, adaptor: Adaptor) -> None:
        w = adaptor.open_write("/x")
        w.write(b"1")
        w.commit()
        w.commit()  # idempotent
        with pytest.raises(ValueError):
            w.write(b"2")

    def test_overwrite_replaces(self, adaptor: Adaptor) -> None:
        put(adaptor, "/o", b"long original content")
        put(adaptor, "/o", b"short")
        assert get(adaptor, "/o") == b"short"
        assert adaptor.stat("/o").size == 5

    def test_write_parent_missing(self, adaptor: Adaptor) -> None:
        with pytest.raises((errors.ParentMissing, errors.NotFound)):
            w = adaptor.open_write("/no/such/dir/file")
            w.write(b"1")
            w.commit()

    def test_streamed_write_many_chunks(self, adaptor: Adaptor) -> None:
        data = os.urandom(12 * 1024 * 1024 + 5)
        put(adaptor, "/big", data, chunk=1024 * 1024 - 1)
        assert adaptor.stat("/big").size == len(data)
        assert hashlib.sha256(get(adaptor, "/big")).digest() == hashlib.sha256(data).digest()

    # -- names -----------------------------------------------------------------
    @pytest.mark.parametrize(
        "name",
        ["with space.txt", "ünïcødé-文件.dat", "quote'and\"dq", "per%cent#hash?q", "emoji-🚀.bin",
         "semi;colon&amp=1", "+plus ~tilde"],
    )
    def test_unusual_names(self, adaptor: Adaptor, name: str) -> None:
        adaptor.mkdir("/dir with space")
        path = f"/dir with space/{name}"
        put(adaptor, path, name.encode())
        assert name in names(adaptor.list("/dir with space"))
        assert get(adaptor, path) == name.encode()
        assert adaptor.stat(path).name == name
        adaptor.remove(path)
        assert adaptor.list("/dir with space") == []

    # -- mkdir / remove ----------------------------------------------------------
    def test_mkdir(self, adaptor: Adaptor) -> None:
        adaptor.mkdir("/m")
        assert adaptor.stat("/m").is_dir
        assert adaptor.list("/m") == []
        assert "m" in names(adaptor.list("/"))
        with pytest.raises(errors.Exists):
            adaptor.mkdir("/m")
        with pytest.raises((errors.ParentMissing, errors.NotFound)):
            adaptor.mkdir("/x/y")

    def test_mkdir_over_file(self, adaptor: Adaptor) -> None:
        put(adaptor, "/f", b"1")
        with pytest.raises(errors.Exists):
            adaptor.mkdir("/f")

    def test_remove_file(self, adaptor: Adaptor) -> None:
        put(adaptor, "/f", b"1")
        adaptor.remove("/f")
        with pytest.raises(errors.NotFound):
            adaptor.stat("/f")
        with pytest.raises(errors.NotFound):
            adaptor.remove("/f")

    def test_remove_directory(self, adaptor: Adaptor) -> None:
        adaptor.mkdir("/d")
        put(adaptor, "/d/f", b"1")
        adaptor.mkdir("/d/e")
        put(adaptor, "/d/e/g", b"2")
        with pytest.raises(errors.NotEmpty):
            adaptor.remove("/d")
        adaptor.remove("/d", recursive=True)
        with pytest.raises(errors.NotFound):
            adaptor.stat("/d")
        adaptor.mkdir("/empty")
        adaptor.remove("/empty")
        assert adaptor.list("/") == []

    # -- rename / copy -------------------------------------------------------------
    def test_rename_file(self, adaptor: Adaptor) -> None:
        put(adaptor, "/a", b"A")
        adaptor.mkdir("/d")
        adaptor.rename("/a", "/d/b")
        assert get(adaptor, "/d/b") == b"A"
        with pytest.raises(errors.NotFound):
            adaptor.stat("/a")

    def test_rename_overwrite_rules(self, adaptor: Adaptor) -> None:
        put(adaptor, "/a", b"A")
        put(adaptor, "/b", b"B")
        with pytest.raises(errors.Exists):
            adaptor.rename("/a", "/b")
        assert get(adaptor, "/b") == b"B"
        adaptor.rename("/a", "/b", overwrite=True)
        assert get(adaptor, "/b") == b"A"
        assert names(adaptor.list("/")) == {"b"}

    def test_rename_directory_tree(self, adaptor: Adaptor) -> None:
        adaptor.mkdir("/src")
        adaptor.mkdir("/src/sub")
        put(adaptor, "/src/sub/f", b"deep")
        put(adaptor, "/src/g", b"top")
        adaptor.rename("/src", "/dst")
        assert get(adaptor, "/dst/sub/f") == b"deep"
        assert get(adaptor, "/dst/g") == b"top"
        with pytest.raises(errors.NotFound):
            adaptor.stat("/src")

    def test_rename_missing(self, adaptor: Adaptor) -> None:
        with pytest.raises(errors.NotFound):
            adaptor.rename("/nope", "/x")

    def test_server_copy_or_unsupported(self, adaptor: Adaptor) -> None:
        put(adaptor, "/c", b"copy me")
        if Capability.SERVER_COPY in adaptor.capabilities:
            adaptor.copy("/c", "/c2")
            assert get(adaptor, "/c2") == b"copy me"
            with pytest.raises(errors.Exists):
                adaptor.copy("/c", "/c2")
            put(adaptor, "/c", b"changed")
            adaptor.copy("/c", "/c2", overwrite=True)
            assert get(adaptor, "/c2") == b"changed"
        else:
            with pytest.raises(errors.Unsupported):
                adaptor.copy("/c", "/c2")

    def test_checksum_when_offered(self, adaptor: Adaptor) -> None:
        data = b"checksum me" * 1000
        put(adaptor, "/k", data)
        for algo in ("md5", "adler32", "sha256"):
            value = adaptor.checksum("/k", algo)
            if value is None:
                continue
            if algo == "adler32":
                import zlib

                assert int(value, 16) == zlib.adler32(data)
            else:
                assert value == hashlib.new(algo, data).hexdigest()

    def test_stream_copy_to_self(self, adaptor: Adaptor) -> None:
        data = os.urandom(2 * 1024 * 1024 + 3)
        put(adaptor, "/s", data)
        n = stream_copy(adaptor, "/s", adaptor, "/s2")
        assert n == len(data)
        assert get(adaptor, "/s2") == data

    def test_probe_ok(self, adaptor: Adaptor) -> None:
        adaptor.probe()

    def test_read_only(self, adaptor: Adaptor) -> None:
        put(adaptor, "/ro", b"1")
        adaptor.read_only = True
        try:
            with pytest.raises(errors.ReadOnly):
                adaptor.open_write("/ro2")
            with pytest.raises(errors.ReadOnly):
                adaptor.mkdir("/rod")
            with pytest.raises(errors.ReadOnly):
                adaptor.remove("/ro")
            with pytest.raises(errors.ReadOnly):
                adaptor.rename("/ro", "/ro3")
            assert get(adaptor, "/ro") == b"1"
        finally:
            adaptor.read_only = False

    # -- size ------------------------------------------------------------------
    @pytest.mark.slow
    def test_one_gib_file(self, adaptor: Adaptor) -> None:
        block = os.urandom(1024 * 1024)
        total = 1024
        sha = hashlib.sha256()
        w = adaptor.open_write("/gib", size_hint=total * len(block))
        for i in range(total):
            chunk = block[i % 7 :] + block[: i % 7]
            w.write(chunk)
            sha.update(chunk)
        w.commit()
        assert adaptor.stat("/gib").size == total * len(block)
        got = hashlib.sha256()
        r = adaptor.open_read("/gib")
        try:
            while True:
                b = r.read(4 * 1024 * 1024)
                if not b:
                    break
                got.update(b)
        finally:
            r.close()
        assert got.hexdigest() == sha.hexdigest()
        tail = get(adaptor, "/gib", total * len(block) - 10)
        assert len(tail) == 10
        adaptor.remove("/gib")
