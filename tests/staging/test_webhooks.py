"""Webhook retries, signing and the outbound-call safety rules."""

from __future__ import annotations

import ipaddress
import itertools
import json
import time

import pytest

from staging.webhooks import address_allowed, next_delay, sign, verify
from tests.staging.conftest import (
    WEBHOOK_SECRET,
    Api,
    Receiver,
    make_config,
    site_dir,
    start_server,
)


def test_retries_until_2xx(server, config, api, receiver):
    receiver.statuses = [500, 500, 500]
    (site_dir(config, "site-a") / "r").write_text("r")
    t0 = time.time()
    api.post("/api/v1/copy", {"id": "r1", "from": "site-a:/r", "to": "site-b:/r",
                              "webhook": receiver.url})
    hooks = receiver.wait_for(4)
    assert len({h["headers"]["webhook-id"] for h in hooks}) == 1
    assert all(verify(WEBHOOK_SECRET, h["headers"], h["body"]) for h in hooks)
    assert len({h["body"] for h in hooks}) == 1  # the same event every time
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(hooks)]
    assert gaps[0] < gaps[1] < gaps[2]  # exponential backoff
    end = time.time() + 5
    while True:
        doc = api.get("/api/v1/copy/r1").json()
        if doc["webhook"]["state"] == "delivered" or time.time() > end:
            break
        time.sleep(0.05)
    deliveries = doc["webhook"]["deliveries"]
    assert [d["status_code"] for d in deliveries] == [500, 500, 500, 200]
    assert [d["attempt"] for d in deliveries] == [1, 2, 3, 4]
    assert deliveries[0]["error"] == "HTTP 500" and deliveries[3]["error"] is None
    assert doc["webhook"]["state"] == "delivered"
    assert time.time() - t0 < 15
    time.sleep(0.3)
    assert len(receiver.requests) == 4


def test_backoff_schedule_spans_an_hour(monkeypatch):
    monkeypatch.setenv("FEDGATE_WEBHOOK_BACKOFF_S", "5")
    delays = [next_delay(n) for n in range(1, 8)]  # 8 attempts = 7 waits
    assert sum(delays) > 3600 and all(a < b for a, b in itertools.pairwise(delays))


def test_signature_rotation():
    sig = sign(["old", "new"], "msg_1", 1700000000, b"{}")
    assert len(sig.split()) == 2
    hdrs = {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time())),
            "webhook-signature": sign(["old", "new"], "msg_1", int(time.time()), b"{}")}
    assert verify("old", hdrs, b"{}") and verify("new", hdrs, b"{}")
    assert not verify("new", hdrs, b"{ }")


@pytest.mark.parametrize("addr,ok", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False),
    ("169.254.169.254", False), ("224.0.0.1", False), ("0.0.0.0", False),
    ("::1", False), ("fe80::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:169.254.169.254", False), ("fc00::1", False), ("100.64.0.1", False),
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("::ffff:8.8.8.8", True),
])
def test_address_rules(addr, ok):
    assert address_allowed(ipaddress.ip_address(addr)) is ok


def test_private_destinations_refused(tmp_path, staging_keys, blockbuster, blocking_log):
    cfg = make_config(tmp_path, staging_keys[1],
                      webhooks={"secret": WEBHOOK_SECRET, "allow_private_addresses": False})
    srv = start_server(cfg)
    try:
        api = Api(srv.url)
        (site_dir(cfg, "site-a") / "s").write_text("s")
        for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest/meta-data",
                    "http://localhost/x", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x",
                    "http://10.0.0.1/x", "https://0x7f000001/x", "file:///etc/passwd",
                    "http://user:pw@127.0.0.1/"):
            r = api.post("/api/v1/copy", {"from": "site-a:/s", "to": "site-b:/s",
                                          "webhook": url})
            assert r.status_code == 422, (url, r.text)
            assert r.json()["error"]["code"] == "unsafe_webhook"
        assert api.get("/api/v1/copy").json() == []
    finally:
        srv.stop()


def test_redirect_not_followed(server, config, api):
    target = Receiver()
    first = Receiver()
    first.redirect_to = target.url
    try:
        (site_dir(config, "site-a") / "d").write_text("d")
        api.post("/api/v1/copy", {"id": "rd", "from": "site-a:/d", "to": "site-b:/d",
                                  "webhook": first.url})
        first.wait_for(1)
        end = time.time() + 5
        while not api.get("/api/v1/copy/rd").json()["webhook"]["deliveries"]:
            assert time.time() < end
            time.sleep(0.05)
        time.sleep(0.3)
        doc = api.get("/api/v1/copy/rd").json()
        assert doc["webhook"]["deliveries"][0]["status_code"] == 302
        assert doc["webhook"]["deliveries"][0]["error"] == "HTTP 302"
        assert target.requests == []
    finally:
        first.close()
        target.close()


def test_webhook_leaves_quickly(server, config, api, receiver):
    (site_dir(config, "site-a") / "w").write_text("w")
    api.post("/api/v1/copy", {"id": "w", "from": "site-a:/w", "to": "site-b:/w",
                              "webhook": receiver.url})
    [hook] = receiver.wait_for(1)
    job = json.loads(hook["body"])["job"]
    from datetime import datetime

    finished = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp()
    assert hook["at"] - finished < 1.0
