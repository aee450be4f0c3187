"""Locks and dead properties live in the state store: they survive a restart
and are shared by several gateway processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ALICE_PW, base_doc, free_port

LOCK_BODY = b"""<?xml version="1.0" encoding="utf-8"?>
<D:lockinfo xmlns:D="DAV:"><D:lockscope><D:exclusive/></D:lockscope>
<D:locktype><D:write/></D:locktype><D:owner>tester</D:owner></D:lockinfo>"""

PROP_BODY = b"""<?xml version="1.0" encoding="utf-8"?>
<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:fedgate-test"><D:set><D:prop>
<Z:colour>blue</Z:colour></D:prop></D:set></D:propertyupdate>"""


class DavProcess:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedgate.cli", "serve-dav", "--config", str(config)],
            stdout=self.log, stderr=self.log, env={**os.environ, "FEDGATE_LOG_LEVEL": "info"})
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                requests.options(self.url + "/", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway did not start: " + log.read_text()[-2000:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def config_for(tmp_path, local_site):
    def make(port: int) -> Path:
        doc = base_doc([local_site])
        doc["listen"] = {"webdav": f"127.0.0.1:{port}"}
        doc["state"] = f"sqlite:///{tmp_path / 'shared' / 'state.db'}"
        doc["data_dir"] = str(tmp_path / "shared")
        p = tmp_path / f"gw-{port}.json"
        p.write_text(json.dumps(doc))
        return p
    return make


def lock(s, url):
    r = s.request("LOCK", url, data=LOCK_BODY, headers={"Timeout": "Second-3600"})
    assert r.status_code in (200, 201), r.text
    return r.headers["Lock-Token"]


def test_lock_and_property_survive_restart(config_for, tmp_path):
    port = free_port()
    cfg = config_for(port)
    s = requests.Session()
    s.auth = ("alice", ALICE_PW)
    gw = DavProcess(cfg, port, tmp_path / "gw.log")
    try:
        assert s.put(gw.url + "/site-a/doc.txt", data=b"v1").status_code == 201
        assert s.request("PROPPATCH", gw.url + "/site-a/doc.txt", data=PROP_BODY
                         ).status_code == 207
        token = lock(s, gw.url + "/site-a/doc.txt")
    finally:
        gw.stop()
    gw = DavProcess(cfg, port, tmp_path / "gw.log")
    try:
        r = s.request("PROPFIND", gw.url + "/site-a/doc.txt", headers={"Depth": "0"})
        assert "blue" in r.text and token.strip("<>") in r.text
        assert s.put(gw.url + "/site-a/doc.txt", data=b"v2").status_code == 423
        r = s.put(gw.url + "/site-a/doc.txt", data=b"v2", headers={"If": f"({token})"})
        assert r.status_code in (200, 204)
        assert s.request("UNLOCK", gw.url + "/site-a/doc.txt",
                         headers={"Lock-Token": token}).status_code == 204
    finally:
        gw.stop()


def test_two_gateway_processes_share_locks_and_properties(config_for, tmp_path):
    p1, p2 = free_port(), free_port()
    g1 = DavProcess(config_for(p1), p1, tmp_path / "g1.log")
    g2 = DavProcess(config_for(p2), p2, tmp_path / "g2.log")
    s = requests.Session()
    s.auth = ("alice", ALICE_PW)
    try:
        s.put(g1.url + "/site-a/shared.txt", data=b"v1")
        token = lock(s, g1.url + "/site-a/shared.txt")
        assert s.put(g2.url + "/site-a/shared.txt", data=b"other").status_code == 423
        assert s.request("LOCK", g2.url + "/site-a/shared.txt", data=LOCK_BODY
                         ).status_code == 423
        r = s.put(g2.url + "/site-a/shared.txt", data=b"v2", headers={"If": f"({token})"})
        assert r.status_code in (200, 204)
        assert s.request("PROPPATCH", g1.url + "/site-a/shared.txt", data=PROP_BODY,
                         headers={"If": f"({token})"}).status_code == 207
        r = s.request("PROPFIND", g2.url + "/site-a/shared.txt", headers={"Depth": "0"})
        assert "blue" in r.text
        assert s.request("UNLOCK", g2.url + "/site-a/shared.txt",
                         headers={"Lock-Token": token}).status_code == 204
        assert s.put(g1.url + "/site-a/shared.txt", data=b"v3").status_code in (200, 204)
    finally:
        g1.stop()
        g2.stop()
