"""The gridftp adaptor against real globus-gridftp-servers (ftp:// and gsiftp://)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from adaptors import create_adaptor
from adaptors.base import AdaptorContext
from tests.adaptors.contract import AdaptorContract


def _raw_listing(adaptor):
    def listing(path: str) -> list[str]:
        folder = urllib.parse.unquote(urllib.parse.urlsplit(adaptor.url(path)).path)
        return [n for n in __import__("os").listdir(folder)]
    return listing


@pytest.fixture
def ftp_adaptor(gridftp_site, tmp_path: Path):
    a = create_adaptor(gridftp_site, AdaptorContext(data_dir=tmp_path))
    yield a
    a.close()


@pytest.fixture
def gsi_adaptor(gsiftp_site, tmp_path: Path):
    a = create_adaptor(gsiftp_site, AdaptorContext(data_dir=tmp_path))
    yield a
    a.close()


class TestGridFTPContract(AdaptorContract):
    @pytest.fixture
    def adaptor(self, ftp_adaptor):
        return ftp_adaptor

    @pytest.fixture
    def raw_listing(self, adaptor):
        return _raw_listing(adaptor)


class TestGSIFTPContract(AdaptorContract):
    @pytest.fixture
    def adaptor(self, gsi_adaptor):
        return gsi_adaptor

    @pytest.fixture
    def raw_listing(self, adaptor):
        return _raw_listing(adaptor)
