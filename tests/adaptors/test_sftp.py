"""The sftp adaptor against a real OpenSSH server on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from adaptors import create_adaptor, errors
from adaptors.base import AdaptorContext, Capability
from adaptors.sftp import TEMP_PREFIX, SFTPAdaptor
from tests.adaptors.contract import AdaptorContract, get, put
from tests.servers.sshd import SSHServer


class MemoryRecords:
    """A stand-in for the state store's record table (a dict)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, Any]] = {}

    def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.data.get((kind, key))

    def put_record(self, kind: str, key: str, value: dict[str, Any]) -> None:
        self.data[(kind, key)] = dict(value)


def make_context(data_dir: Path, records: MemoryRecords | None = None) -> AdaptorContext:
    fernet = Fernet(Fernet.generate_key())
    return AdaptorContext(data_dir=data_dir, encrypt=fernet.encrypt, decrypt=fernet.decrypt,
                          records=records)


def without(site: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in site.items() if k not in keys}


@pytest.fixture(scope="session")
def gateway_context(sshd_server: SSHServer, tmp_path_factory: pytest.TempPathFactory):
    """A gateway data dir whose key was installed once with the password."""
    ctx = make_context(tmp_path_factory.mktemp("gw"), MemoryRecords())
    site = without(sshd_server.site("deploy"), "key_file")
    a = create_adaptor({**site, "password": sshd_server.password}, ctx)
    a.probe()
    a.close()
    return ctx


@pytest.fixture
def adaptor(sftp_site, gateway_context):
    a = create_adaptor(without(sftp_site, "key_file"), gateway_context)
    yield a
    a.close()


@pytest.fixture
def raw_listing(adaptor):
    def listing(path: str) -> list[str]:
        return os.listdir(os.path.join(adaptor.root, path.lstrip("/")))
    return listing


class TestSFTPContract(AdaptorContract):
    pass


# -- beyond the contract -------------------------------------------------------------

def test_sshfs_alias_and_options(sftp_site) -> None:
    a = create_adaptor({**sftp_site, "type": "sshfs"},
                       AdaptorContext(data_dir=Path("/nonexistent")))
    assert isinstance(a, SFTPAdaptor)
    assert SFTPAdaptor.OPTIONS["password"].secret
    assert a.describe() == {"host": "127.0.0.1", "port": sftp_site["port"], "type": "sftp",
                            "mount": sftp_site["path"]}


def test_key_file_site_and_server_copy(sftp_site, tmp_path: Path) -> None:
    a = create_adaptor(sftp_site, make_context(tmp_path))
    try:
        a.probe()
        assert a.key_status() == "installed (key_file)"
        assert Capability.SERVER_COPY in a.capabilities  # OpenSSH 9 offers copy-data
        put(a, "/x", b"1" * 100_000)
        a.copy("/x", "/y")
        assert get(a, "/y") == b"1" * 100_000
        assert not (tmp_path / "ssh").exists()  # no gateway key made when key_file is used
    finally:
        a.close()


def test_key_deployment_end_to_end(sshd_server: SSHServer, tmp_path: Path, caplog) -> None:
    """Password in the options: first use installs the key; the password is
    stored nowhere; a new adaptor without it still works; removing the line
    from authorized_keys makes the site unavailable."""
    caplog.set_level(logging.DEBUG)  # asyncssh, paramiko and ours, everything
    records = MemoryRecords()
    data_dir = tmp_path / "data"
    ctx = make_context(data_dir, records)
    site = without(sshd_server.site("lisa"), "key_file")
    password = sshd_server.password
    a = create_adaptor({**site, "password": password}, ctx)
    assert password not in repr(vars(a))
    assert a.key_status().startswith("not installed (a password is configured")
    a.probe()  # installs the key
    put(a, "/f", b"data")
    assert a.key_status() == "installed"
    assert a._password is None
    a.close()

    line = a.public_key()
    blob = line.split()[1]
    auth = sshd_server.authorized_keys.read_text()
    assert auth.count(blob) == 1
    assert oct(sshd_server.authorized_keys.stat().st_mode & 0o777) == "0o600"
    assert oct((sshd_server.home / ".ssh").stat().st_mode & 0o777) == "0o700"
    # the private key is sealed at rest
    sealed = (data_dir / "ssh" / "gateway_ed25519.key.enc").read_bytes()
    assert b"PRIVATE KEY" not in sealed
    assert oct((data_dir / "ssh" / "gateway_ed25519.key.enc").stat().st_mode & 0o777) == "0o600"
    record = records.get_record("sftp_deployed_key", f"{site['user']}@127.0.0.1:{site['port']}")
    assert record and record["state"] == "deployed"
    # the password is nowhere: data dir, records, sshd log
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    assert password not in repr(records.data)
    assert password.encode() not in sshd_server.log.read_bytes()
    assert "installed for" in caplog.text and password not in caplog.text

    # a second deployment with the password does not duplicate the line
    b = create_adaptor({**site, "password": password}, ctx)
    b.probe()
    b.close()
    assert sshd_server.authorized_keys.read_text().count(blob) == 1

    # a new adaptor without the password works with the key
    c = create_adaptor(site, ctx)
    assert get(c, "/f") == b"data"

    # revocation: remove the line; the site turns unavailable with a clear reason
    kept = [ln for ln in sshd_server.authorized_keys.read_text().splitlines() if blob not in ln]
    sshd_server.authorized_keys.write_text("".join(ln + "\n" for ln in kept))
    with pytest.raises(errors.Unavailable, match="authentication failed"):
        c.probe()
    with pytest.raises(errors.Unavailable, match="authentication failed"):
        c.stat("/f")
    assert c.key_status().startswith("revoked")
    c.close()
    # ... also for a fresh adaptor, and the password does not silently re-install it
    d = create_adaptor({**site, "password": password}, ctx)
    with pytest.raises(errors.Unavailable, match="authentication failed"):
        d.probe()
    d.close()
    assert blob not in sshd_server.authorized_keys.read_text()
    # other sites/keys are unaffected
    e = create_adaptor(sshd_server.site("other"), make_context(tmp_path / "other"))
    e.probe()
    e.close()
    # an operator may allow re-installation explicitly
    d.reset_key_record()
    f = create_adaptor({**site, "password": password}, ctx)
    f.probe()
    assert get(f, "/f") == b"data"
    f.close()
    assert password not in caplog.text


def test_wrong_password_is_unavailable(sshd_server: SSHServer, tmp_path: Path) -> None:
    site = without(sshd_server.site("wrongpw"), "key_file")
    a = create_adaptor({**site, "password": "not-the-password"}, make_context(tmp_path))
    with pytest.raises(errors.Unavailable, match="authentication failed") as info:
        a.probe()
    assert "not-the-password" not in str(info.value)
    a.close()


def test_wrong_host_key_refuses(sshd_server: SSHServer, tmp_path: Path) -> None:
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(tmp_path / "k")], check=True)
    assert other.returncode == 0
    wrong = " ".join((tmp_path / "k.pub").read_text().split()[:2])
    site = {**sshd_server.site("pinned"), "host_key": wrong}
    a = create_adaptor(site, make_context(tmp_path))
    with pytest.raises(errors.Unavailable, match="site pinned: host key verification failed"):
        a.stat("/")
    with pytest.raises(errors.Unavailable, match="host key"):
        a.probe()
    a.close()
    # the password is never sent to a server with the wrong key
    site = without({**site, "password": sshd_server.password}, "key_file")
    b = create_adaptor(site, make_context(tmp_path / "b"))
    with pytest.raises(errors.Unavailable, match="host key"):
        b.probe()
    b.close()


def test_host_key_required_or_explicitly_skipped(sshd_server: SSHServer, tmp_path: Path) -> None:
    site = without(sshd_server.site("nopin"), "host_key")
    a = create_adaptor(site, make_context(tmp_path))
    with pytest.raises(errors.Unavailable, match="host_key or known_hosts"):
        a.probe()
    assert a.key_status().startswith("unknown: no host key pinned")
    a.close()
    b = create_adaptor({**site, "insecure_skip_host_key": True}, make_context(tmp_path))
    b.probe()
    b.close()


def test_known_hosts_file_and_rsa_pin(sshd_server: SSHServer, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd_server.port} {sshd_server.host_key_line}\n")
    site = without(sshd_server.site("kh"), "host_key")
    a = create_adaptor({**site, "known_hosts": str(kh)}, make_context(tmp_path))
    a.probe()
    a.close()
    # the server also has an RSA key: pinning that one works too
    b = create_adaptor({**site, "host_key": sshd_server.rsa_host_key_line},
                       make_context(tmp_path))
    b.probe()
    b.close()
    # ... also for the password login of the key deployment (paramiko)
    site_pw = without({**site, "host_key": sshd_server.rsa_host_key_line,
                       "password": sshd_server.password}, "key_file")
    d = create_adaptor(site_pw, make_context(tmp_path / "rsa"))
    d.probe()
    assert d.key_status() == "installed"
    d.close()
    kh.write_text(f"[127.0.0.1]:{sshd_server.port} {sshd_server.rsa_host_key_line[:30]}x\n")
    c = create_adaptor({**site, "known_hosts": str(tmp_path / "missing")}, make_context(tmp_path))
    with pytest.raises(errors.Unavailable, match="known_hosts"):
        c.probe()
    c.close()


def test_unreachable_site(tmp_path: Path, sshd_server: SSHServer) -> None:
    from tests.servers.sshd import free_port

    site = {**sshd_server.site("down"), "port": free_port()}
    a = create_adaptor(site, make_context(tmp_path))
    with pytest.raises(errors.Unavailable, match="cannot connect"):
        a.probe()
    with pytest.raises(errors.Unavailable, match="cannot connect"):
        a.list("/")
    a.close()


def test_sshd_stopped_mid_read_then_back(sshd_factory, tmp_path: Path) -> None:
    server: SSHServer = sshd_factory()
    a = create_adaptor(server.site("flaky"), make_context(tmp_path))
    try:
        data = os.urandom(64 * 1024 * 1024)
        put(a, "/big", data, chunk=4 * 1024 * 1024)
        r = a.open_read("/big")
        assert r.read(1024 * 1024) == data[: 1024 * 1024]
        server.stop()
        t0 = time.monotonic()
        with pytest.raises(errors.AdaptorError):
            while r.read(1024 * 1024):
                pass
        assert time.monotonic() - t0 < 30
        r.close()
        with pytest.raises((errors.Unavailable, errors.Transient)):
            a.stat("/big")
        server.start()
        # no restart of the adaptor: the next request reconnects
        assert a.stat("/big").size == len(data)
        assert get(a, "/big", 5, 10) == data[5:15]
    finally:
        a.close()


def test_write_aborted_halfway_keeps_old_file(sshd_factory, tmp_path: Path) -> None:
    server: SSHServer = sshd_factory()
    site = server.site("abort")
    a = create_adaptor(site, make_context(tmp_path))
    try:
        put(a, "/keep", b"old content")
        w = a.open_write("/keep")
        w.write(os.urandom(8 * 1024 * 1024))
        server.stop()  # the connection dies under the writer
        with pytest.raises(errors.AdaptorError):
            for _ in range(64):
                w.write(os.urandom(1024 * 1024))
            w.commit()
        w.abort()
        server.start()
        assert get(a, "/keep") == b"old content"
        # the temporary file of the broken upload went with the next connection
        assert os.listdir(site["path"]) == ["keep"]
        # ... and a writer aborted on a live connection leaves nothing at all
        w = a.open_write("/keep")
        w.write(b"x" * 3_000_000)
        w.abort()
        assert os.listdir(site["path"]) == ["keep"]
        assert get(a, "/keep") == b"old content"
    finally:
        a.close()


def test_many_threads_share_a_bounded_pool(adaptor) -> None:
    adaptor.max_connections = 3
    for i in range(20):
        put(adaptor, f"/f{i}", str(i).encode() * 1000)
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                assert get(adaptor, f"/f{i}") == str(i).encode() * 1000
                adaptor.stat(f"/f{i}")
                adaptor.list("/")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert len(adaptor._sessions) <= 3


def test_large_listing_hides_temp_files(adaptor) -> None:
    root = Path(adaptor.root)
    for i in range(2000):
        (root / f"file{i:05d}").write_bytes(b"x")
    (root / f"{TEMP_PREFIX}abc").write_bytes(b"x")
    t0 = time.monotonic()
    entries = adaptor.list("/")
    assert time.monotonic() - t0 < 5
    assert len(entries) == 2000 and all(e.size == 1 for e in entries)


def test_remove_tree_with_many_files(adaptor) -> None:
    adaptor.mkdir("/t")
    adaptor.mkdir("/t/u")
    root = Path(adaptor.root)
    for i in range(300):
        (root / "t" / f"f{i}").write_bytes(b"1")
        (root / "t" / "u" / f"g{i}").write_bytes(b"1")
    adaptor.remove("/t", recursive=True)
    assert adaptor.list("/") == []


def test_rename_overwrites_directory_with_file(adaptor) -> None:
    put(adaptor, "/a", b"A")
    adaptor.mkdir("/d")
    put(adaptor, "/d/x", b"x")
    with pytest.raises(errors.Exists):
        adaptor.rename("/a", "/d")
    adaptor.rename("/a", "/d", overwrite=True)
    assert get(adaptor, "/d") == b"A"


def test_paths_cannot_escape(adaptor) -> None:
    with pytest.raises(errors.PermissionDenied):
        adaptor.stat("/../etc")


def test_small_reads_and_relative_root(sshd_server: SSHServer, gateway_context) -> None:
    site = without(sshd_server.site("rel"), "key_file")
    rel = os.path.relpath(site["path"], sshd_server.home)
    a = create_adaptor({**site, "path": rel, "fsync": False}, gateway_context)
    try:
        data = os.urandom(3 * 1024 * 1024 + 5)
        put(a, "/s", data)
        assert (Path(site["path"]) / "s").read_bytes() == data
        r = a.open_read("/s", 7)
        parts = []
        while chunk := r.read(8192):
            assert len(chunk) <= 8192
            parts.append(chunk)
        r.close()
        assert b"".join(parts) == data[7:]
        assert [e.name for e in a.list("/")] == ["s"]
    finally:
        a.close()


def test_frozen_server_gives_an_error_not_a_hang(sshd_factory, tmp_path: Path,
                                                 monkeypatch) -> None:
    """sshd stopped with SIGSTOP (the TCP connection stays open): keepalives
    notice it; the reader fails instead of hanging, and works once it is back."""
    import signal

    import psutil

    import adaptors.sftp as sftp_mod

    monkeypatch.setattr(sftp_mod, "KEEPALIVE_INTERVAL", 1)
    monkeypatch.setattr(sftp_mod, "KEEPALIVE_COUNT_MAX", 2)
    server: SSHServer = sshd_factory()
    a = create_adaptor(server.site("frozen"), make_context(tmp_path))
    assert server.proc is not None
    procs = [psutil.Process(server.proc.pid)]
    try:
        data = os.urandom(48 * 1024 * 1024)
        put(a, "/big", data, chunk=4 * 1024 * 1024)
        r = a.open_read("/big")
        assert r.read(1024 * 1024) == data[: 1024 * 1024]
        procs += procs[0].children(recursive=True)
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(errors.AdaptorError):
            while r.read(1024 * 1024):
                pass
        assert time.monotonic() - t0 < 20
        r.close()
    finally:
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGCONT)
    try:
        assert a.stat("/big").size == len(data)
        assert get(a, "/big", 1, 3) == data[1:4]
    finally:
        a.close()


def test_gateway_key_shared_through_the_state_store(sshd_server: SSHServer,
                                                    tmp_path: Path) -> None:
    """Two gateway processes (own data dirs, one state store, one secret_key)
    use one key, so a site's authorized_keys gets one line."""
    records = MemoryRecords()
    fernet = Fernet(Fernet.generate_key())

    def ctx(d: str) -> AdaptorContext:
        return AdaptorContext(data_dir=tmp_path / d, encrypt=fernet.encrypt,
                              decrypt=fernet.decrypt, records=records)

    site = without(sshd_server.site("shared"), "key_file")
    a = create_adaptor(site, ctx("one"))
    b = create_adaptor(site, ctx("two"))
    assert a.public_key() == b.public_key()
    sealed = records.get_record("ssh_gateway_key", "ed25519")
    assert sealed and "PRIVATE" not in repr(sealed)
    a.close()
    b.close()


# -- the lean send path and the pipelined listing (adaptors.sftp_wire) -------------

def _pattern(n: int, seed: int = 7) -> bytes:
    block = bytes((i * seed + i // 251) & 0xff for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


def test_lean_send_path_is_installed(adaptor) -> None:
    adaptor.stat("/")
    session = adaptor._sessions[0]
    assert session.conn is not None and "send_packet" in vars(session.conn)
    assert session.conn.get_extra_info("send_cipher") in (
        "aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def test_lean_send_path_can_be_switched_off(sftp_site, gateway_context, monkeypatch) -> None:
    """FEDGATE_SFTP_LEAN=0 (or an untested asyncssh release) keeps asyncssh's own
    send path, and transfers still work."""
    import adaptors.sftp_wire as wire

    assert wire.lean_path_allowed()
    monkeypatch.setattr(wire, "TESTED_ASYNCSSH", frozenset({(1, 0)}))
    assert not wire.lean_path_allowed()
    monkeypatch.undo()
    monkeypatch.setenv("FEDGATE_SFTP_LEAN", "0")
    a = create_adaptor(without(sftp_site, "key_file"), gateway_context)
    try:
        data = _pattern(3 * (1 << 20) + 7)
        put(a, "/plain", data)
        session = a._sessions[0]
        assert session.conn is not None and "send_packet" not in vars(session.conn)
        assert get(a, "/plain") == data
    finally:
        a.close()


@pytest.mark.parametrize("chunk", [1, 4093, 65536, 1 << 20, 3 * (1 << 20) + 17])
def test_writes_of_any_size_arrive_intact(adaptor, chunk: int) -> None:
    data = _pattern(5 * (1 << 20) + 12345 if chunk > 1 else 300_001)
    w = adaptor.open_write("/blob")
    for i in range(0, len(data), chunk):
        w.write(data[i:i + chunk] if chunk % 2 else memoryview(data)[i:i + chunk])
    w.commit()
    assert (Path(adaptor.root) / "blob").read_bytes() == data
    assert get(adaptor, "/blob") == data


def test_rekey_during_transfers(sftp_site, gateway_context, monkeypatch) -> None:
    """Key exchanges in the middle of uploads and downloads (every 1 MiB): the
    lean send path defers data packets during the exchange and switches keys."""
    import adaptors.sftp as sftp_mod

    monkeypatch.setattr(sftp_mod, "REKEY_BYTES", 1 << 20)
    a = create_adaptor(without(sftp_site, "key_file"), gateway_context)
    try:
        data = _pattern(12 * (1 << 20) + 5, seed=13)
        put(a, "/r", data)
        assert (Path(a.root) / "r").read_bytes() == data
        assert get(a, "/r") == data
        assert len(a.list("/")) == 1
    finally:
        a.close()


def test_pipelined_listing_matches_asyncssh_readdir(adaptor) -> None:
    root = Path(adaptor.root)
    for i in range(1234):
        (root / f"n{i}-é").write_bytes(b"y" * (i % 7))
    (root / "sub").mkdir()
    os.symlink(root / "n1-é", root / "link")
    os.symlink(root / "nowhere", root / "dangling")
    import adaptors.sftp as sftp_mod

    async def slow(sftp, _s):
        return [sftp_mod._entry(sftp_mod._fname(n), n.attrs)
                for n in await sftp.readdir(adaptor._remote("/"))
                if sftp_mod._fname(n) not in (".", "..", "link", "dangling")]

    expected = sorted(adaptor._run(adaptor._with(slow)), key=lambda e: e.name)
    expected.append(adaptor.stat("/link"))
    got = sorted(adaptor.list("/"), key=lambda e: e.name)
    assert got == sorted(expected, key=lambda e: e.name)
    assert next(e for e in got if e.name == "sub").is_dir
    assert next(e for e in got if e.name == "link").size == 1
    # the directory handles were closed (no leak across many listings)
    for _ in range(50):
        adaptor.list("/")
    assert len(adaptor.list("/")) == 1236


def test_listing_errors(adaptor) -> None:
    put(adaptor, "/f", b"1")
    with pytest.raises(errors.NotADirectory):
        adaptor.list("/f")
    with pytest.raises(errors.NotFound):
        adaptor.list("/missing")


# -- server-side checksums ----------------------------------------------------------------
def test_server_checksums(adaptor: SFTPAdaptor, sshd_server: SSHServer) -> None:
    """The server hashes the file itself (sha256sum and kin over SSH); a name
    full of shell syntax reaches the command as data, never as shell input
    (if a shell ran it, ``pwned`` would appear in the account's home)."""
    import hashlib

    data = os.urandom(3 * 1024 * 1024 + 1)
    nasty = "/a b'\"$(touch pwned);`touch pwned` \n;touch pwned;*"
    for path in ("/plain.bin", nasty):
        put(adaptor, path, data)
        assert adaptor.checksum(path, "sha256") == hashlib.sha256(data).hexdigest()
        assert adaptor.checksum(path, "MD5") == hashlib.md5(data).hexdigest()
    assert not (sshd_server.home / "pwned").exists()
    assert adaptor.checksum("/plain.bin", "adler32") is None  # no such command: read instead
    assert adaptor.checksum("/missing", "sha256") is None
    assert adaptor.server_checksums  # a missing file says nothing about the server


def test_server_checksums_off_or_unavailable(sftp_site: dict[str, Any], gateway_context: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``server_checksums: false`` never runs a command; a server without the
    command is asked once, then the site verifies by reading back."""
    import adaptors.sftp as sftp_mod

    off = create_adaptor({**without(sftp_site, "key_file"), "server_checksums": False},
                         gateway_context)
    try:
        put(off, "/f", b"x")
        assert off.checksum("/f", "sha256") is None
    finally:
        off.close()
    # an algorithm neither openssl nor any installed tool knows
    monkeypatch.setitem(sftp_mod._DIGEST_COMMANDS, "nosuchalg", "no-such-digest-command")
    a = create_adaptor(without(sftp_site, "key_file"), gateway_context)
    try:
        put(a, "/f", b"x")
        assert a.checksum("/f", "nosuchalg") is None
        assert not a.server_checksums
        assert a.checksum("/f", "sha256") is None  # not asked again
    finally:
        a.close()
