"""Staging copies between every pair of site types (local, sftp, s3, gridftp),
each against its real server; same-type pairs go between two sites of that type
(server-side or third-party paths where the back ends allow)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from adaptors import create_adaptor
from adaptors.base import AdaptorContext
from tests.staging.conftest import Api, make_config, start_server

TYPES = ["local", "sftp", "s3", "gridftp"]


@pytest.fixture
def pair_sites(tmp_path: Path, sshd_server: Any, seaweedfs_server: Any, gridftp_server: Any,
               gridftp_server_b: Any) -> dict[str, dict[str, Any]]:
    sites: dict[str, dict[str, Any]] = {}
    for suffix in ("", "-2"):
        local = tmp_path / f"local{suffix}"
        local.mkdir()
        sites["local" + suffix] = {"type": "local", "path": str(local)}
        sites["sftp" + suffix] = sshd_server.site()
        sites["s3" + suffix] = seaweedfs_server.site(f"pairs-{uuid.uuid4().hex[:8]}/")
    sites["gridftp"] = gridftp_server.site("x")
    sites["gridftp-2"] = gridftp_server_b.site("x")
    return {name: {**opts, "name": name} for name, opts in sites.items()}


def _write(opts: dict[str, Any], path: str, data: bytes, ctx: AdaptorContext) -> None:
    a = create_adaptor(opts, ctx)
    try:
        w = a.open_write(path, size_hint=len(data))
        w.write(data)
        w.commit()
    finally:
        a.close()


def _sha(opts: dict[str, Any], path: str, ctx: AdaptorContext) -> str:
    a = create_adaptor(opts, ctx)
    h = hashlib.sha256()
    try:
        r = a.open_read(path)
        while chunk := r.read(1 << 20):
            h.update(chunk)
        r.close()
    finally:
        a.close()
    return h.hexdigest()


@pytest.fixture
def loop_guard():
    """Blocking-call detector for the staging service's own code.  The sftp and s3
    adaptors run their libraries on private event loops in their own threads
    (asyncssh, fsspec); botocore reads its data files there, which is not the
    aiohttp loop, so only calls made from these packages are checked."""
    from blockbuster import BlockBuster

    bb = BlockBuster(scanned_modules=["staging", "fedgate", "gateway", "aiohttp"])
    bb.activate()
    try:
        yield bb
    finally:
        bb.deactivate()


def test_copies_between_every_pair_of_site_types(tmp_path, staging_keys, pair_sites,
                                                 loop_guard, blocking_log):
    cfg = make_config(tmp_path / "stg", staging_keys[1], sites=list(pair_sites.values()),
                      transfers={"workers": 4, "per_site_concurrency": 4, "retries": 2})
    ctx = AdaptorContext(data_dir=tmp_path / "ctx")
    data = {t: os.urandom(3 * 1024 * 1024 + 7) for t in TYPES}
    for t in TYPES:
        _write(pair_sites[t], f"/src-{t}.bin", data[t], ctx)
    srv = start_server(cfg)
    try:
        api = Api(srv.url)
        jobs = []
        for src in TYPES:
            for dst in TYPES:
                target = dst + "-2" if dst == src else dst
                jobs.append({"id": f"{src}-to-{target}", "from": f"{src}:/src-{src}.bin",
                             "to": f"{target}:/from-{src}.bin"})
        r = api.post("/api/v1/copy", jobs)
        assert r.status_code == 202, r.text
        for job in jobs:
            doc = api.wait(job["id"], timeout=180)
            assert doc["status"] == "succeeded", doc
            src = job["from"].split(":")[0]
            target = job["to"].split(":")[0]
            want = hashlib.sha256(data[src]).hexdigest()
            assert _sha(pair_sites[target], f"/from-{src}.bin", ctx) == want, job["id"]
            if doc.get("checksum", {}).get("sha256"):
                assert doc["checksum"]["sha256"] == want
    finally:
        srv.stop()
