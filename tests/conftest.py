"""Shared fixtures.  Real servers live in tests/servers/ as pytest plugins."""

from __future__ import annotations

pytest_plugins: list[str] = ["tests.servers.gridftp"]
