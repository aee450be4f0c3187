"""PUT atomicity, chunked uploads, ranges, conditionals, depth, HTML listing,
site-down behaviour, permissions and logging hygiene."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from xml.etree import ElementTree as ET

import requests

from tests.conftest import ALICE_PW, base_doc, pw_hash


def hrefs(xml_text: str) -> list[str]:
    root = ET.fromstring(xml_text.encode())
    return [h.text for h in root.iter("{DAV:}href")]


def listing(path):
    return sorted(os.listdir(path))


def test_put_disconnect_keeps_old_content(gateway, tmp_path):
    site = tmp_path / "site-a"
    s = gateway.session()
    assert s.put(gateway.url + "/site-a/big.bin", data=b"original content").status_code == 201
    total = 8 * 1024 * 1024
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    auth = base64.b64encode(f"alice:{ALICE_PW}".encode()).decode()
    sock.sendall((f"PUT /site-a/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                  f"Content-Length: {total}\r\n\r\n").encode())
    sock.sendall(os.urandom(total // 2))
    time.sleep(0.3)
    assert any(n.startswith(".fedgate-tmp-") for n in os.listdir(site)), "upload not staged"
    # hidden from clients while in flight
    r = s.request("PROPFIND", gateway.url + "/site-a/", headers={"Depth": "1"})
    assert ".fedgate-tmp-" not in r.text
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    deadline = time.time() + 10
    while time.time() < deadline and listing(site) != ["big.bin"]:
        time.sleep(0.1)
    assert listing(site) == ["big.bin"], "temporary file left behind"
    assert s.get(gateway.url + "/site-a/big.bin").content == b"original content"


def test_chunked_put(gateway, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 11)

    def gen():
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    s = gateway.session()
    r = s.put(gateway.url + "/site-a/chunked.bin", data=gen())
    assert r.status_code in (201, 204), r.text
    assert (tmp_path / "site-a" / "chunked.bin").read_bytes() == data
    # macOS Finder style: chunked with X-Expected-Entity-Length
    r = s.put(gateway.url + "/site-a/finder.bin", data=gen(),
              headers={"X-Expected-Entity-Length": str(len(data))})
    assert r.status_code in (201, 204)
    assert hashlib.sha256(s.get(gateway.url + "/site-a/finder.bin").content).digest() == \
        hashlib.sha256(data).digest()


def test_ranges_and_conditionals(gateway):
    s = gateway.session()
    data = bytes(range(256)) * 4096
    s.put(gateway.url + "/site-a/r.bin", data=data)
    r = s.get(gateway.url + "/site-a/r.bin", headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    r = s.get(gateway.url + "/site-a/r.bin", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    head = s.head(gateway.url + "/site-a/r.bin")
    etag, lastmod = head.headers["ETag"], head.headers["Last-Modified"]
    assert etag.startswith('"') and int(head.headers["Content-Length"]) == len(data)
    assert s.get(gateway.url + "/site-a/r.bin", headers={"If-None-Match": etag}
                 ).status_code == 304
    assert s.get(gateway.url + "/site-a/r.bin", headers={"If-Modified-Since": lastmod}
                 ).status_code == 304
    assert s.put(gateway.url + "/site-a/r.bin", data=b"x", headers={"If-Match": '"nope"'}
                 ).status_code == 412
    assert s.put(gateway.url + "/site-a/r.bin", data=b"new", headers={"If-Match": etag}
                 ).status_code in (200, 204)
    assert s.put(gateway.url + "/site-a/r.bin", data=b"x", headers={"If-None-Match": "*"}
                 ).status_code == 412


def test_depth_infinity_refused(gateway):
    s = gateway.session()
    for path in ("/", "/site-a/"):
        r = s.request("PROPFIND", gateway.url + path, headers={"Depth": "infinity"})
        assert r.status_code == 403
        assert "propfind-finite-depth" in r.text
    r = s.request("PROPFIND", gateway.url + "/site-a/")  # no Depth = infinity
    assert r.status_code == 403


def test_root_lists_sites_and_browser_listing(gateway):
    s = gateway.session()
    r = s.request("PROPFIND", gateway.url + "/", headers={"Depth": "1"})
    assert r.status_code == 207
    assert "/site-a/" in r.text and "/site-b/" in r.text
    s.put(gateway.url + "/site-a/hello world.txt", data=b"hi")
    r = s.get(gateway.url + "/site-a/", headers={"Accept": "text/html"})
    assert r.status_code == 200 and "text/html" in r.headers["Content-Type"]
    assert "hello world.txt" in r.text


def test_site_down_does_not_break_listing(start_gateway, local_site, tmp_path):
    gw = start_gateway(base_doc([local_site, {"name": "gone", "type": "local",
                                              "path": str(tmp_path / "does-not-exist")}]))
    s = gw.session()
    r = s.request("PROPFIND", gw.url + "/", headers={"Depth": "1"})
    assert r.status_code == 207
    assert "/gone/" in r.text and "/site-a/" in r.text
    assert "root path does not exist" in r.text  # fedgate:site-status
    r = s.request("PROPFIND", gw.url + "/gone/", headers={"Depth": "1"})
    assert r.status_code == 207 and hrefs(r.text) == ["/gone/"]
    assert s.put(gw.url + "/gone/x", data=b"1").status_code in (403, 409, 503)
    assert s.put(gw.url + "/site-a/x", data=b"1").status_code == 201


def test_permissions(start_gateway, local_site):
    gw = start_gateway(base_doc([local_site], permissions=[
        {"user": "bob", "path": "/site-a", "access": "read"},
        {"user": "bob", "path": "/site-a/private", "access": "none"},
        {"user": "bob", "path": "/site-a/drop", "access": "write"}]))
    alice, bob = gw.session(), gw.session("bob", "bob-pw")
    alice.request("MKCOL", gw.url + "/site-a/private")
    alice.request("MKCOL", gw.url + "/site-a/drop")
    alice.put(gw.url + "/site-a/f", data=b"1")
    assert bob.get(gw.url + "/site-a/f").status_code == 200
    assert bob.put(gw.url + "/site-a/f", data=b"2").status_code == 403
    assert bob.delete(gw.url + "/site-a/f").status_code == 403
    assert bob.get(gw.url + "/site-a/private/").status_code == 403
    assert bob.put(gw.url + "/site-a/drop/g", data=b"3").status_code == 201
    assert bob.request("COPY", gw.url + "/site-a/f",
                       headers={"Destination": gw.url + "/site-a/f2"}).status_code == 403
    assert bob.request("COPY", gw.url + "/site-a/f",
                       headers={"Destination": gw.url + "/site-a/drop/f2"}).status_code == 201


def test_no_secret_in_logs(gateway, jwt_keys, caplog):
    caplog.set_level("DEBUG")
    wrong = "WrongPassword-123456"
    tok = jwt_keys["ed25519"].token()
    requests.get(gateway.url + "/site-a/", auth=("alice", wrong))
    requests.get(gateway.url + "/site-a/", auth=("alice", ALICE_PW))
    requests.get(gateway.url + "/site-a/", headers={"Authorization": f"Bearer {tok}x"})
    requests.get(gateway.url + "/site-a/", headers={"x-access-token": tok})
    text = caplog.text
    assert "401" in text or "authentication" in text
    for secret in (wrong, ALICE_PW, tok, pw_hash(ALICE_PW)):
        assert secret not in text


def test_cross_site_copy_and_move(gateway, tmp_path):
    s = gateway.session()
    data = os.urandom(2 * 1024 * 1024)
    s.request("MKCOL", gateway.url + "/site-a/dir")
    s.put(gateway.url + "/site-a/dir/f.bin", data=data)
    r = s.request("COPY", gateway.url + "/site-a/dir/",
                  headers={"Destination": gateway.url + "/site-b/dir/"})
    assert r.status_code == 201
    assert (tmp_path / "site-b" / "dir" / "f.bin").read_bytes() == data
    r = s.request("MOVE", gateway.url + "/site-a/dir/f.bin",
                  headers={"Destination": gateway.url + "/site-b/moved.bin"})
    assert r.status_code == 201
    assert not (tmp_path / "site-a" / "dir" / "f.bin").exists()
    assert (tmp_path / "site-b" / "moved.bin").read_bytes() == data


def test_bad_xml_is_400(gateway):
    s = gateway.session()
    r = s.request("PROPFIND", gateway.url + "/site-a/", headers={"Depth": "0"},
                  data=b"<not-xml")
    assert r.status_code == 400
    r = s.request("PROPPATCH", gateway.url + "/site-a/", data=b"<D:propertyupdate xmlns:D=")
    assert r.status_code == 400
