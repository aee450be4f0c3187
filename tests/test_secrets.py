"""The gateway's own secret key (fedgate.secrets.SecretBox)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from fedgate.secrets import SecretBox, SecretError


def _seal(data_dir: str, q: mp.Queue, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]  # all at once
    q.put(SecretBox.for_data_dir(Path(data_dir), None).encrypt(b"sealed"))


def test_roles_starting_together_share_one_generated_key(tmp_path):
    """Regression: serve-staging and worker starting at once on one data dir
    raced on creating secret.key (FileExistsError killed one of them)."""
    ctx = mp.get_context("fork")
    for round_ in range(20):
        data_dir = tmp_path / f"d{round_}" / "data"
        q = ctx.Queue()
        start = ctx.Barrier(6)
        procs = [ctx.Process(target=_seal, args=(str(data_dir), q, start)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 6
        tokens = [q.get(timeout=5) for _ in procs]
        box = SecretBox.for_data_dir(data_dir, None)
        assert all(box.decrypt(t) == b"sealed" for t in tokens)
        assert [p.name for p in data_dir.iterdir()] == ["secret.key"]
        assert (data_dir / "secret.key").stat().st_mode & 0o777 == 0o600


def test_configured_key_wins_and_wrong_key_is_refused(tmp_path):
    a = SecretBox.for_data_dir(tmp_path, "configured-secret")
    assert not (tmp_path / "secret.key").exists()
    token = a.encrypt(b"x")
    with pytest.raises(SecretError):
        SecretBox.for_data_dir(tmp_path, "another-secret").decrypt(token)
