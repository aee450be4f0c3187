"""Server-level behaviour: idle sockets do not starve workers, TLS, JWKS tokens."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt as pyjwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedgate.auth import jwks_document
from gateway.server import THREADS
from tests.conftest import base_doc


def test_idle_sockets_do_not_starve_workers(gateway):
    """More silent connections than worker threads, then 50 real clients."""
    idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(THREADS * 3)]
    try:
        gateway.session().put(gateway.url + "/site-a/small.txt", data=b"hello")

        def get(_):
            s = gateway.session()
            return [s.get(gateway.url + "/site-a/small.txt", timeout=20).status_code
                    for _ in range(5)]

        with cf.ThreadPoolExecutor(50) as ex:
            codes = [c for batch in ex.map(get, range(50)) for c in batch]
        assert codes == [200] * 250
    finally:
        for s in idle:
            s.close()


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cpath, kpath = tmp_path / "server.pem", tmp_path / "server.key"
    cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return cpath, kpath


def test_tls(start_gateway, local_site, tmp_path):
    from tests.conftest import free_port

    cert, key = _self_signed(tmp_path)
    port = free_port()
    gw = start_gateway(base_doc([local_site], listen={
        "webdav": f"127.0.0.1:{port}", "tls": {"cert": str(cert), "key": str(key)}}), port=port)
    url = f"https://127.0.0.1:{gw.port}/site-a/"
    r = requests.request("PROPFIND", url, headers={"Depth": "0"}, verify=str(cert),
                         auth=("alice", "alice-secret-pw"))
    assert r.status_code == 207
    try:  # plain HTTP on the TLS port gets no data
        status = requests.get(f"http://127.0.0.1:{gw.port}/site-a/", timeout=5,
                              auth=("alice", "alice-secret-pw")).status_code
    except requests.RequestException:
        status = None
    assert status in (None, 400)
    assert requests.request("PROPFIND", url, headers={"Depth": "0"}, verify=str(cert)
                            ).status_code == 401


def test_jwks_url_tokens(start_gateway, local_site, jwt_keys):
    """Tokens of an OIDC provider: keys from jwks_url, user by email/sub."""
    issuer_key = jwt_keys["ec"]
    doc = json.dumps(jwks_document([issuer_key.public_pem])).encode()

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            self.wfile.write(doc)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        jwks_url = f"http://127.0.0.1:{srv.server_address[1]}/jwks"
        gw = start_gateway(base_doc([local_site], jwt={"jwks_url": jwks_url,
                                                       "issuer": "https://iam.test/"}))
        kid = jwks_document([issuer_key.public_pem])["keys"][0]["kid"]
        key = serialization.load_pem_private_key(issuer_key.private_pem, None)
        import time

        now = int(time.time())
        tok = pyjwt.encode({"sub": "someone@iam", "exp": now + 600, "iat": now,
                            "iss": "https://iam.test/"}, key, algorithm="ES256",
                           headers={"kid": kid})
        r = requests.request("PROPFIND", gw.url + "/site-a/", headers={
            "Depth": "0", "Authorization": f"Bearer {tok}"})
        assert r.status_code == 207
        bad = pyjwt.encode({"sub": "someone@iam", "exp": now + 600, "iss": "https://x/"}, key,
                           algorithm="ES256", headers={"kid": kid})
        assert requests.request("PROPFIND", gw.url + "/site-a/", headers={
            "Depth": "0", "Authorization": f"Bearer {bad}"}).status_code == 401
    finally:
        srv.shutdown()


def test_health_probes_need_no_auth(gateway):
    r = requests.get(gateway.url + "/.well-known/fedgate/healthz")
    assert r.status_code == 200 and r.text.strip() == "ok"
    r = requests.get(gateway.url + "/.well-known/fedgate/readyz")
    assert r.status_code == 200
    assert requests.get(gateway.url + "/.well-known/fedgate/other").status_code == 404
    assert requests.get(gateway.url + "/.well-known/other").status_code == 401
