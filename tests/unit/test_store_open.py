"""Opening a store without creating one: what maintenance tools rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.errors import InvalidInput, StoreMissing
from tests.cli import tree


def test_opening_without_create_refuses_a_missing_store_and_creates_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(StoreMissing, match="no ephemera store in sqlite:///"):
        Store.open(Settings(data_dir=tmp_path / "data"), create=False)
    assert tree(tmp_path) == {}


def test_opening_without_create_opens_an_existing_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    Store.open(settings).close()
    with Store.open(settings, create=False) as store:
        assert store.create_session("s1").session.id == "s1"


def test_a_bad_blob_url_is_refused_before_the_database_is_created(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unsupported blob store URL scheme"):
        Store.open(Settings(data_dir=tmp_path / "data", blob_url="ftp://host/x"))
    assert tree(tmp_path) == {}


def test_a_malformed_database_url_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="invalid database URL"):
        Store.open(Settings(data_dir=tmp_path / "data", database_url="not a url"))
    assert tree(tmp_path) == {}
