"""Run the litmus WebDAV conformance suite against a URL (shared by every site type)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

GROUPS = "basic copymove props locks http"


def run_litmus(url: str, user: str, password: str, tmp_path) -> str:
    if shutil.which("litmus") is None:
        pytest.fail("litmus is not installed (scripts/setup-test-env.sh installs it)")
    env = {"TESTS": GROUPS, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(["litmus", "-k", url, user, password], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    return out


def assert_litmus_clean(out: str) -> None:
    summaries = re.findall(r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, "
                           r"(\d+) failed", out)
    groups = {g for g, *_ in summaries}
    failed_lines = [ln for ln in out.splitlines() if "FAIL" in ln or "WARNING" in ln]
    assert groups == set(GROUPS.split()), f"not every litmus group ran:\n{out[-3000:]}"
    for group, run, passed, failed in summaries:
        assert int(failed) == 0 and int(run) == int(passed), \
            f"litmus {group}: {failed} failed\n" + "\n".join(failed_lines)
    assert not [ln for ln in failed_lines if "FAIL" in ln], "\n".join(failed_lines)
