"""The client commands against a live server."""

from __future__ import annotations

import argparse

import pytest

from staging.client import add_client_commands, progress_line
from tests.staging.conftest import PASSWORD, Api, site_dir


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="fedgate")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_client_commands(server, config, capsys, monkeypatch):
    monkeypatch.setenv("FEDGATE_URL", server.url)
    monkeypatch.setenv("FEDGATE_USER", "alice")
    monkeypatch.setenv("FEDGATE_PASSWORD", PASSWORD)
    a = site_dir(config, "site-a")
    (a / "dir").mkdir()
    (a / "dir" / "hello.txt").write_text("hello")
    (a / "dir" / "x.simg").write_text("img")
    Api(server.url).post("/api/v1/refresh")
    rc, out, _ = run(["cp", "site-a:/dir/hello.txt", "site-b:/hello.txt", "--wait",
                      "--id", "cli-1"], capsys)
    assert rc == 0 and out.strip() == "cli-1"
    assert (site_dir(config, "site-b") / "hello.txt").read_text() == "hello"
    rc, out, _ = run(["find", "hello.txt"], capsys)
    assert rc == 0 and "site-a:/dir/hello.txt" in out and "site-b:/hello.txt" in out
    rc, out, _ = run(["find", "*.simg"], capsys)
    assert rc == 0 and "site-a:/dir/x.simg" in out
    rc, _, err = run(["find", "nothing"], capsys)
    assert rc == 1 and "not found" in err
    run(["find", "x"], capsys)
    rc, out, _ = run(["ls", "site-a:/dir"], capsys)
    assert rc == 0 and out.count("\n") == 2 and "hello.txt" in out
    rc, out, _ = run(["ls", "site-a:/"], capsys)
    assert rc == 0 and "site-a:/dir" in out and "hello" not in out
    rc, out, _ = run(["jobs"], capsys)
    assert rc == 0 and "cli-1" in out and "succeeded" in out
    rc, out, _ = run(["jobs", "cli-1", "--follow"], capsys)
    assert rc == 0 and '"status": "succeeded"' in out
    rc, out, _ = run(["cancel", "cli-1"], capsys)
    assert rc == 0 and "succeeded" in out
    rc, _, err = run(["cp", "nosuch:/a", "site-b:/a"], capsys)
    assert rc == 1 and "unknown_site" in err
    rc, _, err = run(["cp", "site-a:/missing", "site-b:/m", "--wait"], capsys)
    assert rc == 1 and "failed" in err
    monkeypatch.setenv("FEDGATE_PASSWORD", "wrong")
    rc, _, err = run(["jobs"], capsys)
    assert rc == 1 and "HTTP 401" in err
    monkeypatch.setenv("FEDGATE_URL", "http://127.0.0.1:9")
    rc, _, err = run(["jobs"], capsys)
    assert rc == 1 and "cannot reach" in err


def test_progress_line():
    line = progress_line({"id": "j", "status": "running", "bytes_total": 1024 ** 3,
                          "bytes_done": 512 * 1024 ** 2, "rate_bps": 100 * 1024 ** 2})
    assert "50.0%" in line and "512.0 MiB/1.0 GiB" in line and "100.0 MiB/s" in line


def test_bad_usage(capsys):
    parser = argparse.ArgumentParser(prog="fedgate")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["cp", "only-one"])
    assert exc.value.code == 2
