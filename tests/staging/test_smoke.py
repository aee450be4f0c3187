from __future__ import annotations

import hashlib
import os

from tests.staging.conftest import site_dir


def test_smoke_copy(server, api, config):
    src = site_dir(config, "site-a") / "f.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    r = api.post("/api/v1/copy", [{"id": "c1", "from": "site-a:/f.bin", "to": "site-b:/f.bin"}])
    assert r.status_code == 202, r.text
    doc = api.wait("c1")
    assert doc["status"] == "succeeded", doc
    dst = site_dir(config, "site-b") / "f.bin"
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == doc["checksum"]["sha256"]
