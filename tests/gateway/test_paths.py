"""SPEC 3: no path in any encoding escapes a site."""

from __future__ import annotations

import http.client
import os

import pytest

TRAVERSALS = [
    "/site-a/../outside.txt",
    "/site-a/%2e%2e/outside.txt",
    "/site-a/%2E%2E/outside.txt",
    "/site-a/%252e%252e/outside.txt",
    "/site-a/..%2foutside.txt",
    "/site-a/..%2Foutside.txt",
    "/site-a/..%5coutside.txt",
    "/site-a/%5c..%5coutside.txt",
    "/site-a/sub/%2e%2e/%2e%2e/outside.txt",
    "/site-a/.%2e/outside.txt",
    "/site-a/%00outside.txt",
    "/site-a/a%00b",
    "/site-a/%c0%ae%c0%ae/outside.txt",
    "/site-a/%c0%af..%c0%afoutside.txt",
    "/site-a/%e0%80%ae%e0%80%ae/outside.txt",
    "/site-a/./outside.txt",
    "/site-a//outside.txt",
    "/site-a/sub\\..\\..\\outside.txt",
]


def raw(gw, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    import base64

    conn.putheader("Authorization", "Basic " + base64.b64encode(b"alice:alice-secret-pw").decode())
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


@pytest.fixture(scope="module")
def paths_gw(tmp_path_factory):
    from fedgate.config import build_config
    from fedgate.federation import Federation
    from fedgate.store import open_store
    from gateway.app import build_app
    from gateway.server import make_server, start_in_thread
    from tests.conftest import Gateway, base_doc, free_port

    tmp_path = tmp_path_factory.mktemp("paths")
    (tmp_path / "site-a").mkdir()
    port = free_port()
    cfg = build_config(base_doc([{"name": "site-a", "type": "local",
                                  "path": str(tmp_path / "site-a")}]),
                       data_dir=tmp_path_factory.mktemp("paths-data"))
    fed = Federation(cfg, open_store(cfg.state))
    server = make_server(cfg, build_app(fed), ("127.0.0.1", port))
    start_in_thread(server)
    gw = Gateway(f"http://127.0.0.1:{port}", cfg, fed, server, port)
    yield gw, tmp_path
    gw.stop()


@pytest.fixture
def sandbox(paths_gw):
    gateway, tmp_path = paths_gw
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"TOP-SECRET-OUTSIDE")
    (tmp_path / "site-a" / "sub").mkdir(exist_ok=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    yield gateway, tmp_path, before
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    assert after == before, "something was written"
    assert outside.read_bytes() == b"TOP-SECRET-OUTSIDE"


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_in_url(sandbox, path):
    gw, tmp_path, _ = sandbox
    for method in ("GET", "PROPFIND", "PUT", "DELETE", "MKCOL"):
        status, body = raw(gw, method, path, {"Depth": "0"},
                           b"PWNED" if method == "PUT" else None)
        assert 400 <= status < 500, (method, path, status)
        assert b"TOP-SECRET" not in body
    assert not list(tmp_path.glob("*PWNED*"))


@pytest.mark.parametrize("dest", [*TRAVERSALS, "/site-a/..%2f..%2fpwned"])
@pytest.mark.parametrize("method", ["COPY", "MOVE"])
def test_traversal_in_destination(sandbox, method, dest):
    gw, tmp_path, _ = sandbox
    src = tmp_path / "site-a" / "sub" / "src.txt"
    src.write_bytes(b"source")
    try:
        status, _ = raw(gw, method, "/site-a/sub/src.txt",
                        {"Destination": f"http://127.0.0.1:{gw.port}{dest}", "Overwrite": "T"})
        assert 400 <= status < 500, (method, dest, status)
        assert src.read_bytes() == b"source"
        assert (tmp_path / "outside.txt").read_bytes() == b"TOP-SECRET-OUTSIDE"
    finally:
        os.unlink(src)


def test_unknown_site_404(paths_gw):
    status, _ = raw(paths_gw[0], "GET", "/no-such-site/file")
    assert status == 404
