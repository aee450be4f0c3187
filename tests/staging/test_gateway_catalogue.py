"""Changes made through the WebDAV gateway reach the catalogue at once."""

from __future__ import annotations

from tests.conftest import ALICE_PW, base_doc
from tests.staging.conftest import Api, start_server


def test_gateway_changes_update_catalogue(tmp_path, start_gateway, local_site):
    doc = base_doc([local_site])
    doc["state"] = f"sqlite:///{tmp_path / 'shared.db'}"
    from tests.conftest import free_port

    sport = free_port()
    doc["listen"] = {"webdav": f"127.0.0.1:{free_port()}", "staging": f"127.0.0.1:{sport}"}
    doc["catalogue"] = {"refresh_interval_s": 3600}
    gw = start_gateway(doc, port=int(doc["listen"]["webdav"].rsplit(":", 1)[1]))
    srv = start_server(gw.config)
    try:
        api = Api(srv.url, auth=("alice", ALICE_PW))
        s = gw.session()
        assert api.get("/api/v1/find/fresh.dat").status_code == 404
        s.request("MKCOL", gw.url + "/site-a/dir")
        assert s.put(gw.url + "/site-a/dir/fresh.dat", data=b"12345").status_code == 201
        [e] = api.get("/api/v1/find/fresh.dat").json()
        assert e["path"] == "site-a:/dir/fresh.dat" and e["size"] == 5
        s.request("MOVE", gw.url + "/site-a/dir/fresh.dat",
                  headers={"Destination": gw.url + "/site-a/moved.dat"})
        assert api.get("/api/v1/find/fresh.dat").status_code == 404
        assert api.get("/api/v1/find/moved.dat").json()[0]["path"] == "site-a:/moved.dat"
        s.delete(gw.url + "/site-a/moved.dat")
        assert api.get("/api/v1/find/moved.dat").status_code == 404
    finally:
        srv.stop()
