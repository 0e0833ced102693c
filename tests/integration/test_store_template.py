"""The tests' migrated SQLite template: a store started from it is the one a fresh open makes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ephemera import Settings, Store
from tests.conftest import database_dump, seed_from_template


def schema(data_dir: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(data_dir / "ephemera.db") as conn:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        return list(rows)


def test_a_store_seeded_from_the_template_is_the_one_a_fresh_open_makes(
    tmp_path: Path, migrated_sqlite: Path
) -> None:
    fresh = Settings(data_dir=tmp_path / "fresh")
    seeded = Settings(data_dir=tmp_path / "seeded")
    seed_from_template(seeded, migrated_sqlite)
    with Store.open(fresh) as a, Store.open(seeded) as b:
        assert database_dump(a) == database_dump(b)
        assert a.catalog.table_row_counts() == b.catalog.table_row_counts()
    assert schema(fresh.data_dir) == schema(seeded.data_dir)
    for name in ("", "ephemera.db"):
        assert os.stat(fresh.data_dir / name).st_mode == os.stat(seeded.data_dir / name).st_mode
    assert sorted(p.name for p in fresh.data_dir.iterdir()) == sorted(
        p.name for p in seeded.data_dir.iterdir()
    )


def test_an_existing_data_dir_is_left_as_it_is(tmp_path: Path, migrated_sqlite: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    seed_from_template(settings, migrated_sqlite)
    assert list(settings.data_dir.iterdir()) == []
