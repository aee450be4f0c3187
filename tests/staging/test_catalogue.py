"""The catalogue: crawl, list (LOBCDER shape, paginated), find, note_change,
stale sites; plus infrastructure, health, readiness and metrics."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from adaptors.local import LocalAdaptor
from fedgate.store.sqlite import SQLiteStore
from staging.catalogue import crawl_site, note_change
from tests.staging.conftest import Api, make_config, site_dir, start_server


def _populate(config):
    a, b = site_dir(config, "site-a"), site_dir(config, "site-b")
    (a / "UC1").mkdir()
    (a / "Mock").mkdir()
    (b / "UC1").mkdir()
    (a / "UC1" / "sample_script.py").write_text("print(1)\n")
    (a / "Mock" / "sample_script.py").write_text("print(2)\n")
    (b / "UC1" / "ucdemo-0.1.simg").write_bytes(b"s" * 1234)
    (a / "tensorflow-gpu.img").write_bytes(b"t" * 10)
    return a, b


def test_list_find_and_changes(server, config, api):
    a, _b = _populate(config)
    r = api.post("/api/v1/refresh")
    assert r.status_code == 200 and r.json()["sites"]["site-a"]["status"] == "ok"
    listing = api.get("/api/v1/list").json()
    assert len(listing["sample_script.py"]) == 2
    e = listing["ucdemo-0.1.simg"][0]
    assert e["filename"] == "/UC1/ucdemo-0.1.simg" and e["size"] == 1234
    assert e["mime"] == "application/octet-stream" and e["type"] == "file"
    assert e["url"] == "http://127.0.0.1:8000/site-b/UC1/ucdemo-0.1.simg"
    assert e["location"] == {"name": "site-b", "host": "localhost", "port": None,
                             "type": "local", "mount": str(site_dir(config, "site-b"))}
    assert listing["sample_script.py"][0]["mime"] == "text/x-python"
    assert listing["UC1"][0]["type"] == "directory"
    # pagination with Link rel=next covers every entry exactly once
    seen, url, pages = [], "/api/v1/list?limit=2", 0
    while url:
        r = api.get(url)
        for name, entries in r.json().items():
            seen += [(name, x["path"]) for x in entries]
        link = r.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else None
        pages += 1
    total = sum(len(v) for v in listing.values())
    assert len(seen) == len(set(seen)) == total and pages >= total // 2
    only_a = api.get("/api/v1/list?site=site-a&prefix=/UC1").json()
    assert set(only_a) == {"UC1", "sample_script.py"}
    # find by name, glob, path
    found = api.get("/api/v1/find/sample_script.py").json()
    assert sorted(x["filename"] for x in found) == ["/Mock/sample_script.py",
                                                    "/UC1/sample_script.py"]
    assert api.get("/api/v1/find/nothing-here").status_code == 404
    assert {x["basename"] for x in api.get("/api/v1/find?glob=*.im*").json()} == {
        "tensorflow-gpu.img"}
    assert api.get("/api/v1/find?path=/UC1/ucdemo-0.1.simg").json()[0]["site"] == "site-b"
    assert api.get("/api/v1/find?path=site-a:/Mock/sample_script.py").status_code == 200
    assert api.get("/api/v1/find").status_code == 400
    assert api.get("/api/v1/find?path=/a/../b").status_code == 400
    # a deletion through the gateway hook disappears at once; a new file appears
    store = SQLiteStore(config.state[len("sqlite:///"):])
    adaptor = LocalAdaptor("site-a", {"name": "site-a", "type": "local", "path": str(a)},
                           None)
    (a / "Mock" / "sample_script.py").unlink()
    note_change(store, "site-a", adaptor, "/Mock/sample_script.py", deleted=True)
    (a / "Mock" / "new.txt").write_text("n")
    note_change(store, "site-a", adaptor, "/Mock/new.txt")
    assert len(api.get("/api/v1/find/sample_script.py").json()) == 1
    assert api.get("/api/v1/find/new.txt").json()[0]["size"] == 1
    note_change(store, "site-a", adaptor, "/gone/never")  # never raises
    # a crawl prunes what was deleted behind our back
    shutil.rmtree(a / "UC1")
    api.post("/api/v1/refresh?site=site-a")
    assert api.get("/api/v1/find/UC1").json()[0]["site"] == "site-b"
    store.close()


def test_stale_site_keeps_entries(tmp_path, staging_keys, blockbuster, blocking_log):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "keep.dat").write_text("k")
    cfg = make_config(tmp_path, staging_keys[1])
    cfg.sites.append({"name": "flaky", "type": "local", "path": str(extra)})
    srv = start_server(cfg)
    try:
        api = Api(srv.url)
        api.post("/api/v1/refresh")
        [e] = api.get("/api/v1/find/keep.dat").json()
        assert e["stale"] is False
        shutil.rmtree(extra)  # the site goes away
        r = api.post("/api/v1/refresh").json()
        assert r["sites"]["flaky"]["status"] == "stale"
        [e] = api.get("/api/v1/find/keep.dat").json()
        assert e["stale"] is True
        infra = api.get("/api/v1/infrastructure").json()
        flaky = next(s for s in infra if s.get("name") == "flaky")
        assert flaky["status"] == "unavailable"
        assert 'fedgate_site_errors_total{site="flaky",op="crawl"} 1' in api.get(
            "/metrics").text
    finally:
        srv.stop()


def test_crawl_at_start(tmp_path, staging_keys, blockbuster, blocking_log):
    cfg = make_config(tmp_path, staging_keys[1])
    (site_dir(cfg, "site-a") / "early.txt").write_text("e")
    srv = start_server(cfg)
    try:
        api = Api(srv.url)
        end = time.time() + 10
        while api.get("/api/v1/find/early.txt").status_code != 200:
            assert time.time() < end
            time.sleep(0.05)
    finally:
        srv.stop()


def test_crawl_100k(tmp_path):
    """A crawl never reads contents and handles a large tree quickly."""
    root = tmp_path / "big"
    for d in range(20):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(250):
            (root / f"d{d}" / f"f{f}.txt").touch()
    store = SQLiteStore(tmp_path / "s.db")
    adaptor = LocalAdaptor("big", {"name": "big", "type": "local", "path": str(root)}, None)
    t0 = time.perf_counter()
    assert crawl_site(store, "big", adaptor) == 20 + 5000
    assert time.perf_counter() - t0 < 5
    assert store.catalogue_count("big") == 5020
    store.close()


def test_infrastructure_health_metrics(server, config, api):
    infra = api.get("/api/v1/infrastructure").json()
    kinds = [s["type"] for s in infra]
    assert kinds[:3] == ["webdav", "query", "token"]
    assert infra[0]["ports"] == [8000] and infra[1]["ports"] == [config.listen.staging[1]]
    assert infra[2] == {"type": "token", "header": "x-access-token"}
    assert {s["name"] for s in infra[3:]} == {"site-a", "site-b"}
    assert all(s["status"] == "ok" for s in infra[3:])
    assert Api(server.url, auth=None).get("/healthz").json() == {"status": "ok"}
    ready = Api(server.url, auth=None).get("/readyz")
    assert ready.status_code == 200 and ready.json()["sites"]["site-a"]["ok"]
    (site_dir(config, "site-a") / "m").write_text("m" * 100)
    api.post("/api/v1/copy", {"id": "m", "from": "site-a:/m", "to": "site-b:/m"})
    api.wait("m")
    text = Api(server.url, auth=None).get("/metrics").text
    assert 'fedgate_jobs{status="succeeded"} 1' in text
    assert "fedgate_bytes_moved_total 100" in text
    assert 'fedgate_http_request_duration_seconds_bucket{method="POST",route="/api/v1/copy"' \
        in text
    assert 'fedgate_webhook_attempts_total{result="delivered"} 0' in text
    doc = Api(server.url, auth=None).get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/v1/copy" in doc["paths"]


def test_site_path_helpers_untouched(tmp_path: Path):
    # note_change on a directory upserts it and its direct children
    root = tmp_path / "r"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "x").write_text("x")
    store = SQLiteStore(tmp_path / "s.db")
    adaptor = LocalAdaptor("r", {"name": "r", "type": "local", "path": str(root)}, None)
    note_change(store, "r", adaptor, "/d")
    assert {e["path"] for e in store.catalogue_page(site="r")} == {"/d", "/d/e", "/d/x"}
    note_change(store, "r", adaptor, "/d", deleted=True)
    assert store.catalogue_count("r") == 0
    store.close()


def test_periodic_refresh(tmp_path, staging_keys, blockbuster, blocking_log):
    cfg = make_config(tmp_path, staging_keys[1], catalogue={"refresh_interval_s": 1})
    srv = start_server(cfg)
    try:
        api = Api(srv.url)
        a = site_dir(cfg, "site-a")
        (a / "later.txt").write_text("l")
        end = time.time() + 10
        while api.get("/api/v1/find/later.txt").status_code != 200:
            assert time.time() < end
            time.sleep(0.1)
        (a / "later.txt").unlink()  # removed behind the gateway's back
        while api.get("/api/v1/find/later.txt").status_code != 404:
            assert time.time() < end
            time.sleep(0.1)
    finally:
        srv.stop()


def test_tls(tmp_path, staging_keys, blockbuster, blocking_log):
    import datetime
    import ipaddress

    import requests
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cfg = make_config(tmp_path, staging_keys[1])
    cfg.listen.tls_cert, cfg.listen.tls_key = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    srv = start_server(cfg)
    try:
        url = srv.url.replace("http://", "https://")
        r = requests.get(url + "/healthz", verify=str(tmp_path / "c.pem"), timeout=10)
        assert r.status_code == 200
    finally:
        srv.stop()
