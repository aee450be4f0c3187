"""litmus (all five groups) through the gateway on every remote site type, each
against its real server started by tests/servers/ (sshd, SeaweedFS,
globus-gridftp-server with and without GSI)."""

from __future__ import annotations

import pytest

from tests.conftest import ALICE_PW, base_doc
from tests.gateway.litmus import assert_litmus_clean, run_litmus


@pytest.mark.parametrize("kind", ["sftp_site", "s3_site", "gridftp_site", "gsiftp_site"])
def test_litmus_on_site_type(kind, request, start_gateway, tmp_path):
    site = dict(request.getfixturevalue(kind))
    site["name"] = "remote"
    gw = start_gateway(base_doc([site]))
    status = gw.federation.status("remote", refresh=True)
    assert status.ok, status.message
    out = run_litmus(gw.url + "/remote/", "alice", ALICE_PW, tmp_path)
    assert_litmus_clean(out)
