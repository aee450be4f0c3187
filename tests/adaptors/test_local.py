from __future__ import annotations

import os
from pathlib import Path

import pytest

from adaptors import create_adaptor
from adaptors.base import AdaptorContext
from tests.adaptors.contract import AdaptorContract


@pytest.fixture
def adaptor(tmp_path: Path):
    root = tmp_path / "site"
    root.mkdir()
    a = create_adaptor({"name": "t", "type": "local", "path": str(root)},
                       AdaptorContext(data_dir=tmp_path))
    yield a
    a.close()


@pytest.fixture
def raw_listing(adaptor):
    def listing(path: str) -> list[str]:
        return os.listdir(adaptor.root / path.lstrip("/"))
    return listing


class TestLocalContract(AdaptorContract):
    pass


def test_native_alias(tmp_path: Path) -> None:
    a = create_adaptor({"name": "n", "type": "native", "path": str(tmp_path)},
                       AdaptorContext(data_dir=tmp_path))
    assert a.type_name == "local"
