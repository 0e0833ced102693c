"""`ephemera import` in this process, where a test can make the system refuse a watch."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner
from watchdog.observers.inotify import InotifyEmitter

from ephemera import Settings, Store
from ephemera.cli import app


def test_a_watch_the_system_refuses_is_one_line_with_the_poll_hint_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_watches_left(self: InotifyEmitter) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyEmitter, "on_thread_start", no_watches_left)
    data_dir, root = tmp_path / "data", tmp_path / "photos"
    root.mkdir()
    (root / "a.png").write_bytes(b"picture")
    with Store.open(Settings(data_dir=data_dir)) as store:
        session_id = store.create_session().session.id

    result = CliRunner().invoke(
        app,
        ["import", str(root), "--session", session_id, "--watch", "--data-dir", str(data_dir)],
    )

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1:] == [  # after the line naming the backends
        f"error: cannot watch {root}: inotify watch limit reached; --poll watches without inotify"
    ]
    with Store.open(Settings(data_dir=data_dir)) as store:
        assert store.list_imports(session_id).items == []
