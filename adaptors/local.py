"""``local`` (alias ``native``) sites: a folder of the gateway's file system."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as stat_mod
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from adaptors import errors
from adaptors.base import (
    TEMP_PREFIX,
    Adaptor,
    Capability,
    Entry,
    OptionSpec,
    Reader,
    Writer,
    base_name,
    utc_from_timestamp,
)


@contextlib.contextmanager
def translate_os_errors(path: str) -> Iterator[None]:
    """Map ``OSError`` into the adaptor error tree (message without host paths)."""
    try:
        yield
    except errors.AdaptorError:
        raise
    except OSError as exc:
        cls = errors.ERRNO_ERRORS.get(exc.errno or 0, errors.AdaptorError)
        raise cls(f"{exc.strerror or exc.__class__.__name__}: {path}", path) from exc


def _entry(name: str, st: os.stat_result) -> Entry:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    size = 0 if is_dir else st.st_size
    etag = f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"
    return Entry(name, is_dir, size, utc_from_timestamp(st.st_mtime), etag)


class _LocalWriter(Writer):
    def __init__(self, final: Path, path: str) -> None:
        self._final = final
        self._path = path
        self._tmp = final.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        with translate_os_errors(path):
            self._fh = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        self._done = False
        self.bytes_written = 0

    def write(self, data: bytes) -> int:
        if self._done:
            raise ValueError("write after commit/abort")
        with translate_os_errors(self._path):
            self._fh.write(data)
        self.bytes_written += len(data)
        return len(data)

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            with translate_os_errors(self._path):
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                os.replace(self._tmp, self._final)
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()


class _RangeReader:
    """A file reader limited to ``length`` bytes."""

    def __init__(self, fh: Any, length: int | None) -> None:
        self._fh = fh
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left is not None:
            if self._left <= 0:
                return b""
            size = self._left if size < 0 else min(size, self._left)
        data: bytes = self._fh.read(size)
        if self._left is not None:
            self._left -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()


class LocalAdaptor(Adaptor):
    """A folder on the gateway host.  Writes are staged in a hidden temporary
    file in the target directory and renamed into place on commit."""

    type_name = "local"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "path": OptionSpec(str, required=True, help="folder served as the site root"),
    }
    capabilities = Capability.SERVER_COPY | Capability.ATOMIC_RENAME

    def __init__(self, name: str, options: Any, context: Any) -> None:
        super().__init__(name, options, context)
        self.root = Path(str(options["path"])).expanduser().resolve()

    def describe(self) -> dict[str, Any]:
        return {"host": "localhost", "port": None, "type": self.type_name,
                "mount": str(self.root)}

    def _real(self, path: str) -> Path:
        # namespace has validated the path; still refuse anything that escapes
        rel = path.lstrip("/")
        real = self.root / rel if rel else self.root
        if ".." in Path(rel).parts or "\x00" in rel:
            raise errors.PermissionDenied("path escapes the site", path)
        return real

    def stat(self, path: str) -> Entry:
        with translate_os_errors(path):
            st = os.stat(self._real(path))
        return _entry(base_name(path), st)

    def list(self, path: str) -> list[Entry]:
        real = self._real(path)
        out: list[Entry] = []
        with translate_os_errors(path), os.scandir(real) as it:
            for de in it:
                if de.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    st = de.stat()
                except FileNotFoundError:
                    continue  # vanished between readdir and stat
                out.append(_entry(de.name, st))
        return out

    def open_read(self, path: str, offset: int = 0, length: int | None = None) -> Reader:
        real = self._real(path)
        with translate_os_errors(path):
            if real.is_dir():
                raise errors.IsADirectory("is a directory", path)
            fh = open(real, "rb", buffering=0)  # noqa: SIM115 - returned to caller
            if offset:
                fh.seek(offset)
        return _RangeReader(fh, length)

    def open_write(self, path: str, size_hint: int | None = None) -> Writer:
        self.check_writable(path)
        real = self._real(path)
        if real.is_dir():
            raise errors.IsADirectory("is a directory", path)
        if not real.parent.is_dir():
            raise errors.ParentMissing("parent directory does not exist", path)
        return _LocalWriter(real, path)

    def mkdir(self, path: str) -> None:
        self.check_writable(path)
        real = self._real(path)
        if not real.parent.is_dir():
            raise errors.ParentMissing("parent directory does not exist", path)
        with translate_os_errors(path):
            os.mkdir(real)

    def remove(self, path: str, recursive: bool = False) -> None:
        self.check_writable(path)
        if path == "/":
            raise errors.PermissionDenied("cannot remove a site root", path)
        real = self._real(path)
        with translate_os_errors(path):
            if real.is_dir() and not real.is_symlink():
                if recursive:
                    shutil.rmtree(real)
                else:
                    os.rmdir(real)
            else:
                os.unlink(real)

    def rename(self, src: str, dst: str, overwrite: bool = False) -> None:
        self.check_writable(dst)
        rs, rd = self._real(src), self._real(dst)
        with translate_os_errors(src):
            if not rs.exists():
                raise errors.NotFound("source does not exist", src)
            if not rd.parent.is_dir():
                raise errors.ParentMissing("parent directory does not exist", dst)
            if rd.exists() or rd.is_symlink():
                if not overwrite:
                    raise errors.Exists("target exists", dst)
                if (rd.is_dir() and not rs.is_dir()) or (rd.is_dir() and rs.is_dir()):
                    shutil.rmtree(rd)
            os.replace(rs, rd)

    def copy(self, src: str, dst: str, overwrite: bool = False) -> None:
        self.check_writable(dst)
        rs, rd = self._real(src), self._real(dst)
        with translate_os_errors(src):
            if rs.is_dir():
                raise errors.IsADirectory("server-side copy is for files", src)
            if not rs.exists():
                raise errors.NotFound("source does not exist", src)
            if rd.exists() and not overwrite:
                raise errors.Exists("target exists", dst)
            if not rd.parent.is_dir():
                raise errors.ParentMissing("parent directory does not exist", dst)
            writer = _LocalWriter(rd, dst)
            try:
                with open(rs, "rb") as fin:
                    # copy_file_range/sendfile where the kernel offers it
                    shutil.copyfileobj(fin, writer._fh, 1024 * 1024)
                    writer.bytes_written = rs.stat().st_size
                writer.commit()
            except BaseException:
                writer.abort()
                raise

    def probe(self) -> None:
        super().probe()
        if self.read_only:
            return
        probe = self.root / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise errors.Unavailable(f"root is not writable: {exc.strerror}") from exc
