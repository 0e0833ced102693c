"""The tests' own `ephemera serve` helper: a start that fails leaves no server behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Server


def test_a_server_that_does_not_answer_in_time_is_killed_not_left_running(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path / "data")
    server.start_timeout_s = 0.01  # far less than any start takes
    try:
        with pytest.raises(AssertionError, match="timed out"):
            server.start()
        assert server.process is not None
        assert server.process.poll() is not None, "the server outlived its failed start"
    finally:
        server.kill()
