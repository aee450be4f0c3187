"""What the adaptor issues ask to see through the WebDAV gateway, against the
real servers: atomic PUT when the client drops, server-side S3 COPY, GridFTP
server-to-server COPY, and a dying sshd during a GET."""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import ALICE_PW, base_doc

MiB = 1024 * 1024


def _partial_put(gw, path: str, total: int, send: int) -> None:
    sock = socket.create_connection(("127.0.0.1", gw.port))
    auth = base64.b64encode(f"alice:{ALICE_PW}".encode()).decode()
    sock.sendall((f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                  f"Content-Length: {total}\r\n\r\n").encode())
    block = os.urandom(MiB)
    for _ in range(send // MiB):
        sock.sendall(block)
    time.sleep(0.5)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _wait(cond, timeout: float = 30) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


@pytest.mark.parametrize("kind", ["sftp_site", "gridftp_site"])
def test_dropped_put_keeps_old_file_posix_sites(kind, request, start_gateway):
    site = {**request.getfixturevalue(kind), "name": "remote"}
    gw = start_gateway(base_doc([site]))
    root = site["path"] if "path" in site else site["url"].split(":", 2)[2].split("/", 1)[1]
    root = root if root.startswith("/") else "/" + root
    s = gw.session()
    assert s.put(gw.url + "/remote/f.bin", data=b"previous content").status_code == 201
    _partial_put(gw, "/remote/f.bin", 64 * MiB, 16 * MiB)
    assert _wait(lambda: sorted(os.listdir(root)) == ["f.bin"]), os.listdir(root)
    assert s.get(gw.url + "/remote/f.bin").content == b"previous content"


def test_dropped_gib_put_leaves_no_object_or_upload_on_s3(s3_site, seaweedfs_server,
                                                          start_gateway):
    site = {**s3_site, "name": "remote"}
    gw = start_gateway(base_doc([site]))
    _partial_put(gw, "/remote/gib.bin", 1024 * MiB, 512 * MiB)
    client = seaweedfs_server.client()
    bucket, prefix = site["bucket"], site["prefix"]

    def clean() -> bool:
        ups = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
        objs = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return not ups and not objs

    assert _wait(clean, 60), "object or pending multipart upload left behind"
    r = gw.session().request("PROPFIND", gw.url + "/remote/", headers={"Depth": "1"})
    assert "gib.bin" not in r.text


def test_s3_copy_within_bucket_moves_no_data_through_gateway(s3_site, seaweedfs_server,
                                                             start_gateway):
    from tests.servers.seaweedfs import CountingProxy

    port = int(seaweedfs_server.endpoint_url.rsplit(":", 1)[1])
    proxy = CountingProxy(port)
    try:
        site = {**s3_site, "name": "remote",
                "endpoint_url": f"http://127.0.0.1:{proxy.port}"}
        gw = start_gateway(base_doc([site]))
        s = gw.session()
        data = os.urandom(48 * MiB)
        assert s.put(gw.url + "/remote/big.bin", data=data).status_code == 201
        before = proxy.total
        r = s.request("COPY", gw.url + "/remote/big.bin",
                      headers={"Destination": gw.url + "/remote/copy.bin"})
        assert r.status_code == 201
        r = s.request("MOVE", gw.url + "/remote/copy.bin",
                      headers={"Destination": gw.url + "/remote/moved.bin"})
        assert r.status_code == 201
        through = proxy.total - before
        assert through < 512 * 1024, f"{through} bytes went through the gateway"
        assert s.get(gw.url + "/remote/moved.bin").content == data
    finally:
        proxy.close()


def test_object_written_directly_shows_at_next_propfind(s3_site, seaweedfs_server,
                                                        start_gateway):
    site = {**s3_site, "name": "remote"}
    gw = start_gateway(base_doc([site]))
    s = gw.session()
    assert "direct.txt" not in s.request("PROPFIND", gw.url + "/remote/",
                                         headers={"Depth": "1"}).text
    seaweedfs_server.client().put_object(Bucket=site["bucket"], Key=site["prefix"] +
                                         "direct.txt", Body=b"hi")
    assert "direct.txt" in s.request("PROPFIND", gw.url + "/remote/",
                                     headers={"Depth": "1"}).text


def test_gridftp_copy_between_servers_is_third_party(gridftp_server, gridftp_server_b,
                                                     start_gateway):
    a = {**gridftp_server.site("a"), "name": "gsa"}
    b = {**gridftp_server_b.site("b"), "name": "gsb"}
    gw = start_gateway(base_doc([a, b]))
    s = gw.session()
    data = os.urandom(32 * MiB)
    name = f"tpc-{uuid.uuid4().hex[:6]}.bin"
    assert s.put(gw.url + f"/gsa/{name}", data=data).status_code == 201
    io_before = _proc_io()
    r = s.request("COPY", gw.url + f"/gsa/{name}", headers={"Destination": gw.url +
                                                            f"/gsb/{name}"})
    assert r.status_code == 201
    moved = _proc_io() - io_before
    assert moved < 4 * MiB, f"{moved} bytes passed through the gateway process"
    assert s.get(gw.url + f"/gsb/{name}").content == data


def _proc_io() -> int:
    """Bytes this (gateway) process read and wrote through syscalls."""
    text = Path("/proc/self/io").read_text()
    fields = dict(line.split(": ") for line in text.splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


def test_sshd_stopped_mid_get_then_back(sshd_server, start_gateway):
    site = {**sshd_server.site(), "name": "remote"}
    gw = start_gateway(base_doc([site]))
    s = gw.session()
    data = os.urandom(96 * MiB)
    assert s.put(gw.url + "/remote/big.bin", data=data).status_code == 201
    got = 0
    failed = False
    t0 = time.time()
    try:
        with s.get(gw.url + "/remote/big.bin", stream=True, timeout=60) as r:
            for chunk in r.iter_content(MiB):
                got += len(chunk)
                if got >= 8 * MiB and sshd_server.proc is not None:
                    sshd_server.stop()
        failed = got < len(data)
    except requests.RequestException:
        failed = True
    assert failed, "the GET completed although sshd went away"
    assert time.time() - t0 < 60, "the client hung"
    sshd_server.start()
    assert _wait(lambda: s.get(gw.url + "/remote/big.bin", timeout=60).content == data, 60)
