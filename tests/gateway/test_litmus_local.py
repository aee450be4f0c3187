from __future__ import annotations

from tests.conftest import ALICE_PW
from tests.gateway.litmus import assert_litmus_clean, run_litmus


def test_litmus_local_basic(gateway, tmp_path):
    out = run_litmus(gateway.url + "/site-a/", "alice", ALICE_PW, tmp_path)
    assert_litmus_clean(out)


def test_litmus_local_jwt(gateway, jwt_keys, tmp_path):
    token = jwt_keys["ed25519"].token()
    out = run_litmus(gateway.url + "/site-b/", "jwt", token, tmp_path)
    assert_litmus_clean(out)
