"""The local volume: file modes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.volume import check_modes
from tests.conftest import Server

MiB = 1024 * 1024


@pytest.fixture
def umask() -> Iterator[None]:
    """Restores the process umask after a test that sets it."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def modes_under(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(mode of each file, mode of each folder, the root included) under ``root``."""
    files, folders = {}, {".": stat.S_IMODE(root.stat().st_mode)}
    for folder, dirs, names in os.walk(root):
        for name in dirs:
            path = Path(folder) / name
            folders[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
        for name in names:
            path = Path(folder) / name
            files[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return files, folders


def fill_a_store(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """Modes of everything a store creates, seen while it is open (with its WAL, an upload
    in staging and a committed blob)."""
    with Store.open(settings) as store:
        store.create_session(session_id="s1")
        store.put_artifact("s1", b"secret bytes", name="a.bin")
        upload = store.begin_upload("s1", name="staged.bin")
        try:
            upload.write(b"half")
            files, folders = modes_under(settings.data_dir)
        finally:
            upload.abort()
    assert {"ephemera.db", "ephemera.db-wal", "ephemera.db-shm"} <= files.keys()
    assert sum(p.startswith("blobs/staging/") for p in files) == 1
    assert sum(p.startswith("blobs/sessions/s1/") for p in files) == 1
    assert {".", "blobs", "blobs/sessions", "blobs/sessions/s1", "blobs/staging"} == set(folders)
    return files, folders


def test_a_new_store_creates_files_0600_and_folders_0700(data_dir: Path, umask: None) -> None:
    os.umask(0o022)  # the common default, which used to leave everything world-readable
    files, folders = fill_a_store(Settings(data_dir=data_dir))
    assert {p: m for p, m in files.items() if m != 0o600} == {}
    assert {p: m for p, m in folders.items() if m != 0o700} == {}


def test_configured_modes_are_exact_whatever_the_umask(data_dir: Path, umask: None) -> None:
    os.umask(0o077)  # would take the group bits an operator asked for
    files, folders = fill_a_store(Settings(data_dir=data_dir, file_mode="0640", dir_mode="0750"))
    assert {p: m for p, m in files.items() if m != 0o640} == {}
    assert {p: m for p, m in folders.items() if m != 0o750} == {}


def test_a_permissive_umask_does_not_loosen_the_modes(data_dir: Path, umask: None) -> None:
    os.umask(0)
    files, folders = fill_a_store(Settings(data_dir=data_dir))
    assert set(files.values()) == {0o600}
    assert set(folders.values()) == {0o700}


def test_the_mode_check_names_each_path_looser_than_configured(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    fill_a_store(settings)
    assert check_modes(settings) == []
    # Loosened on purpose, as an older version or an operator would have left them.
    os.chmod(data_dir, 0o755)  # noqa: S103
    os.chmod(data_dir / "ephemera.db", 0o644)
    os.chmod(data_dir / "blobs", 0o750)  # noqa: S103
    warnings = check_modes(settings)
    assert len(warnings) == 3
    assert f"{data_dir} has mode 0755, looser than dir_mode 0700" in warnings[0]
    assert f"{data_dir / 'ephemera.db'} has mode 0644, looser than file_mode 0600" in warnings[1]
    assert f"{data_dir / 'blobs'} has mode 0750, looser than dir_mode 0700" in warnings[2]
    # Tighter than configured is no warning: group access is the operator's choice.
    assert check_modes(Settings(data_dir=data_dir, file_mode="0644", dir_mode="0755")) == []


@pytest.mark.slow
def test_serve_warns_at_start_up_about_loose_modes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fill_a_store(Settings(data_dir=data_dir))
    os.chmod(data_dir, 0o755)  # noqa: S103 (loosened on purpose)
    server = Server(data_dir).start()
    try:
        lines = server.log.read_text().splitlines()
    finally:
        server.stop()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [
        f"warning: {data_dir} has mode 0755, looser than dir_mode 0700: other local users may "
        f"read it (chmod 0700 {data_dir})"
    ]
