"""SPEC 4.1: which JWTs the gateway accepts, and what scopes allow."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from fedgate.auth import generate_keypair
from tests.conftest import base_doc


def b64(d: bytes) -> str:
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()


def craft(header: dict, claims: dict, sig: bytes = b"") -> str:
    h = b64(json.dumps(header).encode())
    c = b64(json.dumps(claims).encode())
    return f"{h}.{c}.{b64(sig)}"


def propfind(url: str, **headers) -> int:
    return requests.request("PROPFIND", url, headers={"Depth": "0", **headers}).status_code


@pytest.mark.parametrize("kind", ["ed25519", "ec", "rsa"])
def test_valid_tokens_accepted(gateway, jwt_keys, kind):
    tok = jwt_keys[kind].token()
    alg = pyjwt.get_unverified_header(tok)["alg"]
    assert alg == {"ed25519": "EdDSA", "ec": "ES256", "rsa": "RS256"}[kind]
    assert propfind(gateway.url + "/site-a/", Authorization=f"Bearer {tok}") == 207
    assert propfind(gateway.url + "/site-a/", **{"x-access-token": tok}) == 207


def _bad_tokens(jwt_keys, tmp_path):
    ee = jwt_keys["ed25519"]
    now = int(time.time())
    priv = serialization.load_pem_private_key(ee.private_pem, None)
    other_priv_path, _ = generate_keypair(tmp_path / "other", "ed25519")
    other = serialization.load_pem_private_key(other_priv_path.read_bytes(), None)
    rsa = jwt_keys["rsa"]
    hs_sig = hmac.new(rsa.public_pem.encode(), b"", hashlib.sha256).digest()
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    hs_claims = b64(json.dumps({"email": rsa.email, "exp": now + 600}).encode())
    hs_sig = hmac.new(rsa.public_pem.encode(), f"{hs_header}.{hs_claims}".encode(),
                      hashlib.sha256).digest()
    return {
        "alg-none": craft({"alg": "none", "typ": "JWT"}, {"email": ee.email, "exp": now + 600}),
        "hs256-public-key-as-secret": f"{hs_header}.{hs_claims}.{b64(hs_sig)}",
        "expired": ee.token(ttl_s=-3600),
        "no-exp": pyjwt.encode({"email": ee.email, "iat": now}, priv, algorithm="EdDSA"),
        "future-nbf": pyjwt.encode({"email": ee.email, "exp": now + 7200, "nbf": now + 3600},
                                   priv, algorithm="EdDSA"),
        "future-iat": pyjwt.encode({"email": ee.email, "exp": now + 7200, "iat": now + 3600},
                                   priv, algorithm="EdDSA"),
        "wrong-key": pyjwt.encode({"email": ee.email, "exp": now + 600}, other,
                                  algorithm="EdDSA"),
        "unknown-user": pyjwt.encode({"email": "nobody@example.org", "exp": now + 600}, priv,
                                     algorithm="EdDSA"),
        "alg-mismatch": pyjwt.encode({"email": rsa.email, "exp": now + 600}, priv,
                                     algorithm="EdDSA"),
        "malformed": "eyJhbGciOiJFZERTQSJ9.not-base64!.x",
        "garbage": "abc",
    }


def test_bad_tokens_rejected(gateway, jwt_keys, tmp_path, caplog):
    caplog.set_level("INFO")
    for name, tok in _bad_tokens(jwt_keys, tmp_path).items():
        for headers in ({"Authorization": f"Bearer {tok}"}, {"x-access-token": tok}):
            r = requests.request("PROPFIND", gateway.url + "/site-a/",
                                 headers={"Depth": "0", **headers})
            assert r.status_code == 401, name
            assert 'Bearer realm="fedgate"' in r.headers.get("WWW-Authenticate", "") or \
                any("Bearer" in v for k, v in r.raw.headers.items() if k.lower() ==
                    "www-authenticate"), name
            # the reason is logged, never returned
            assert "expired" not in r.text.lower() and "signature" not in r.text.lower()
        assert tok not in caplog.text, f"token {name} was logged"


def test_audience_and_issuer(start_gateway, local_site, jwt_keys):
    gw = start_gateway(base_doc([local_site], jwt_keys,
                                jwt={"audience": "fedgate", "issuer": "https://iam.test/"}))
    ee = jwt_keys["ed25519"]
    url = gw.url + "/site-a/"
    good = ee.token(audience="fedgate", issuer="https://iam.test/")
    assert propfind(url, Authorization=f"Bearer {good}") == 207
    for tok in (ee.token(audience="other", issuer="https://iam.test/"),
                ee.token(issuer="https://iam.test/"),
                ee.token(audience="fedgate", issuer="https://evil.test/")):
        assert propfind(url, Authorization=f"Bearer {tok}") == 401


def test_algorithm_allow_list(start_gateway, local_site, jwt_keys):
    gw = start_gateway(base_doc([local_site], jwt_keys, jwt={"algorithms": ["EdDSA"]}))
    url = gw.url + "/site-a/"
    assert propfind(url, Authorization=f"Bearer {jwt_keys['ed25519'].token()}") == 207
    assert propfind(url, Authorization=f"Bearer {jwt_keys['rsa'].token()}") == 401


def test_storage_scopes_by_whole_segment(gateway, jwt_keys):
    ee = jwt_keys["ed25519"]
    s = requests.Session()
    admin = gateway.session()
    admin.request("MKCOL", gateway.url + "/site-a/x")
    admin.request("MKCOL", gateway.url + "/site-a/xy")
    admin.put(gateway.url + "/site-a/x/f.txt", data=b"in x")
    admin.put(gateway.url + "/site-a/xy/f.txt", data=b"in xy")
    tok = ee.token(scope="openid storage.read:/site-a/x")
    h = {"Authorization": f"Bearer {tok}"}
    assert s.get(gateway.url + "/site-a/x/f.txt", headers=h).content == b"in x"
    assert s.request("PROPFIND", gateway.url + "/site-a/x/", headers={**h, "Depth": "1"}
                     ).status_code == 207
    assert s.get(gateway.url + "/site-a/xy/f.txt", headers=h).status_code == 403
    assert s.put(gateway.url + "/site-a/x/new.txt", data=b"no", headers=h).status_code == 403
    assert s.put(gateway.url + "/site-b/new.txt", data=b"no", headers=h).status_code == 403
    assert s.delete(gateway.url + "/site-a/x/f.txt", headers=h).status_code == 403
    assert s.request("MOVE", gateway.url + "/site-a/x/f.txt",
                     headers={**h, "Destination": gateway.url + "/site-a/x/g.txt"}
                     ).status_code == 403
    # modify scope allows writing below its path only
    tok2 = ee.token(scope="storage.modify:/site-a/x storage.read:/site-a/x")
    h2 = {"Authorization": f"Bearer {tok2}"}
    assert s.put(gateway.url + "/site-a/x/new.txt", data=b"yes", headers=h2).status_code == 201
    assert s.put(gateway.url + "/site-a/xy/new.txt", data=b"no", headers=h2).status_code == 403
    assert (gateway.federation.sites["site-a"].root / "x" / "new.txt").read_bytes() == b"yes"


def test_jwt_as_basic_password(gateway, jwt_keys):
    tok = jwt_keys["ec"].token()
    r = requests.request("PROPFIND", gateway.url + "/site-a/", auth=("anyone", tok),
                         headers={"Depth": "0"})
    assert r.status_code == 207
    r = requests.request("PROPFIND", gateway.url + "/site-a/", auth=("anyone", tok + "x"),
                         headers={"Depth": "0"})
    assert r.status_code == 401
