"""deploy/healthcheck.py (``fedgate-healthcheck`` in the image) against real servers:
an in-process gateway, a tiny HTTP server standing in for the staging service's
/healthz and /readyz, and a SQLite state store."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, base_doc, free_port
from tests.deploy.common import load_healthcheck

hc = load_healthcheck()


def test_role_and_config_from_pid1_command_line() -> None:
    argv = ["/usr/bin/tini", "--", "/opt/fedgate/bin/python", "/opt/fedgate/bin/fedgate",
            "serve-dav", "--config", "/etc/fedgate/fedgate.yaml", "--log-format", "json"]
    assert hc.parse_command_line(argv) == ("dav", "/etc/fedgate/fedgate.yaml")
    assert hc.parse_command_line(["fedgate", "--log-level", "debug", "worker",
                                  "--config=/c.yaml"]) == ("worker", "/c.yaml")
    assert hc.parse_command_line(["fedgate", "serve-staging", "--config", "serve"]) == \
        ("staging", "serve")
    assert hc.parse_command_line(["fedgate", "check", "--config", "x"]) == (None, "x")


def test_endpoint_probes_wildcard_binds_on_loopback() -> None:
    doc = {"listen": {"webdav": "0.0.0.0:9000", "staging": "[::]:9002",
                      "tls": {"cert": "c", "key": "k"}}}
    assert hc.endpoint(doc, "webdav") == ("127.0.0.1", 9000, True)
    assert hc.endpoint(doc, "staging") == ("::1", 9002, True)
    assert hc.endpoint({}, "webdav") == ("127.0.0.1", 8000, False)
    assert hc.endpoint({"listen": {"staging": "10.1.2.3:8102"}}, "staging") == \
        ("10.1.2.3", 8102, False)


def _config(tmp_path: Path, **listen: str) -> Path:
    path = tmp_path / "fedgate.yaml"
    lines = ["listen:"] + [f"  {k}: {v}" for k, v in listen.items()]
    lines.append(f"state: sqlite:///{tmp_path / 'state.db'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dav_role_against_a_running_gateway(tmp_path: Path,
                                            start_gateway: Callable[..., Gateway],
                                            local_site: dict[str, Any],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    gw = start_gateway(base_doc([local_site]))
    config = _config(tmp_path, webdav=f"0.0.0.0:{gw.port}")
    assert hc.main(["dav", "--config", str(config)]) == 0
    assert "dav ok" in capsys.readouterr().out
    gw.stop()
    assert hc.main(["dav", "--config", str(config)]) == 1
    assert "unhealthy" in capsys.readouterr().out


class _Handler(http.server.BaseHTTPRequestHandler):
    ready = True

    def do_GET(self) -> None:
        status = {"/healthz": 200, "/readyz": 200 if self.ready else 503}.get(self.path, 404)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_staging() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("H", (_Handler,), {"ready": True})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_staging_role_liveness_and_readiness(tmp_path: Path,
                                             fake_staging: tuple[int, type[_Handler]]) -> None:
    port, handler = fake_staging
    config = str(_config(tmp_path, staging=f"127.0.0.1:{port}"))
    assert hc.main(["staging", "--config", config]) == 0
    assert hc.main(["staging", "--ready", "--config", config]) == 0
    handler.ready = False
    assert hc.main(["staging", "--config", config]) == 0
    assert hc.main(["staging", "--ready", "--config", config]) == 1


def test_serve_role_needs_both(tmp_path: Path, fake_staging: tuple[int, type[_Handler]],
                               start_gateway: Callable[..., Gateway],
                               local_site: dict[str, Any]) -> None:
    port, _ = fake_staging
    gw = start_gateway(base_doc([local_site]))
    config = str(_config(tmp_path, webdav=f"127.0.0.1:{gw.port}",
                         staging=f"127.0.0.1:{port}"))
    assert hc.main(["serve", "--config", config]) == 0
    config = str(_config(tmp_path, webdav=f"127.0.0.1:{free_port()}",
                         staging=f"127.0.0.1:{port}"))
    assert hc.main(["serve", "--config", config]) == 1


def test_worker_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path))
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "status").write_text("Name:\tfedgate\nState:\tS (sleeping)\n")
    assert hc.check_worker({}, False, proc) == "worker ok (running)"
    (proc / "status").write_text("Name:\tfedgate\nState:\tZ (zombie)\n")
    with pytest.raises(hc.Unhealthy):
        hc.check_worker({}, False, proc)
    # --ready: the state store answers (a real SQLite store here)
    assert hc.main(["worker", "--ready", "--config", config]) == 0
    assert "state store answers" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    (tmp_path / "a-file").write_text("not a directory")
    bad.write_text(f"state: sqlite:///{tmp_path}/a-file/state.db\n")
    assert hc.main(["worker", "--ready", "--config", str(bad)]) == 1
