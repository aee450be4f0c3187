"""SPEC 1: the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import requests

from tests.conftest import free_port


def fedgate(*args, stdin: str | None = None, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "fedgate.cli", *args], input=stdin,
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_malloc_trim_setting_from_the_environment(monkeypatch):
    """A bad FEDGATE_MALLOC_TRIM_MIB is a one-line note and the default, never a
    traceback; a good one is used."""
    from fedgate import cli

    monkeypatch.setenv("FEDGATE_MALLOC_TRIM_MIB", "4")
    assert cli._trim_threshold_mib() == 4
    env = {**os.environ, "FEDGATE_MALLOC_TRIM_MIB": "lots"}
    r = subprocess.run([sys.executable, "-m", "fedgate.cli", "--version"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "FEDGATE_MALLOC_TRIM_MIB must be a whole number" in r.stderr


def test_server_processes_tune_the_collector():
    """tune_gc freezes what is loaded and raises the young threshold, and still
    collects cyclic garbage made afterwards."""
    code = ("import gc, weakref\n"
            "from fedgate.cli import tune_gc, GC_YOUNG_THRESHOLD\n"
            "tune_gc()\n"
            "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
            "assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD\n"
            "class C: pass\n"
            "a = C(); a.me = a; r = weakref.ref(a); del a\n"
            "keep = [C() for _ in range(3 * GC_YOUNG_THRESHOLD)]\n"
            "assert r() is None, 'a cycle was never collected'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_help_and_bad_usage():
    r = fedgate("--help")
    assert r.returncode == 0 and "serve" in r.stdout and "keygen" in r.stdout
    for sub in ("serve", "check", "token", "keygen", "hash-password"):
        assert fedgate(sub, "--help").returncode == 0
    r = fedgate("frobnicate")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    r = fedgate("token", "--email", "x@y")
    assert r.returncode == 2 and "--key" in r.stderr
    r = fedgate("token", "--key", "/nonexistent.pem", "--email", "x@y")
    assert r.returncode == 2 and "cannot read --key" in r.stderr
    r = fedgate("check", "--config", "/nonexistent.yaml")
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_hash_password_from_stdin():
    r = fedgate("hash-password", stdin="s3cret\n")
    assert r.returncode == 0 and r.stdout.startswith("$argon2id$")
    assert "s3cret" not in r.stdout + r.stderr
    from argon2 import PasswordHasher

    assert PasswordHasher().verify(r.stdout.strip(), "s3cret")


def test_keygen_and_token(tmp_path):
    for kind, alg in (("ed25519", "EdDSA"), ("rsa", "RS256"), ("ec", "ES256")):
        out = tmp_path / kind
        r = fedgate("keygen", "--out", str(out), "--type", kind)
        assert r.returncode == 0, r.stderr
        assert oct((out / "jwt-private.pem").stat().st_mode)[-3:] == "600"
        r = fedgate("token", "--key", str(out / "jwt-private.pem"), "--email", "ee@x.org",
                    "--ttl", "10m", "--aud", "fedgate", "--scope", "storage.read:/a")
        assert r.returncode == 0, r.stderr
        import jwt

        tok = r.stdout.strip()
        assert jwt.get_unverified_header(tok)["alg"] == alg
        claims = jwt.decode(tok, (out / "jwt-public.pem").read_text(), algorithms=[alg],
                            audience="fedgate")
        assert claims["email"] == "ee@x.org" and claims["scope"] == "storage.read:/a"
        assert 590 <= claims["exp"] - claims["iat"] <= 600
    r = fedgate("token", "--key", str(tmp_path / "ec" / "jwt-private.pem"), "--email", "e",
                "--ttl", "soon")
    assert r.returncode == 2 and "--ttl" in r.stderr


def test_check_reports_each_site(tmp_path):
    (tmp_path / "ok").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sites:\n  - {{name: good, type: local, path: {tmp_path / 'ok'}}}\n"
                   f"  - {{name: bad, type: local, path: {tmp_path / 'missing'}}}\n")
    r = fedgate("check", "--config", str(cfg))
    assert r.returncode == 1
    assert "site good (local): ok, read/write" in r.stdout
    assert "site bad (local): FAILED: root path does not exist" in r.stdout
    cfg.write_text(f"sites:\n  - {{name: good, type: local, path: {tmp_path / 'ok'}}}\n")
    assert fedgate("check", "--config", str(cfg)).returncode == 0
    cfg.write_text("sites:\n  - {name: good, type: local, path: /tmp, color: 1}\n")
    r = fedgate("check", "--config", str(cfg))
    assert r.returncode == 2 and "'color'" in r.stderr and "line 2" in r.stderr


def test_demo_serve(tmp_path):
    """`fedgate serve` with no config: two sites, a demo user, password printed once."""
    port = free_port()
    data = tmp_path / "demo"
    # the demo binds 8000 by default; the test moves it with a config-less env knob
    env = {**os.environ, "FEDGATE_DEMO_WEBDAV": f"127.0.0.1:{port}",
           "FEDGATE_DEMO_STAGING": f"127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([sys.executable, "-m", "fedgate.cli", "serve", "--data-dir",
                             str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        lines = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "password:" in line:
                break
        password = lines[-1].split("password:")[1].split()[0]
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.options(url + "/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        r = requests.request("PROPFIND", url + "/", auth=("demo", password),
                             headers={"Depth": "1"})
        assert r.status_code == 207 and "/site-a/" in r.text and "/site-b/" in r.text
        assert requests.get(url + "/site-a/README.txt", auth=("demo", password)).ok
        assert password not in (data / "demo-user.hash").read_text()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert password not in err
    # second start: the password is not printed again
    proc = subprocess.Popen([sys.executable, "-m", "fedgate.cli", "serve", "--data-dir",
                             str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    time.sleep(2)
    proc.terminate()
    out, _ = proc.communicate(timeout=15)
    assert password not in out and "demo" in out
    json.dumps(out)
