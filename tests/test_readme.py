"""The README's quick start works as written, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server

pytestmark = pytest.mark.slow

README = Path(__file__).parent.parent / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_the_readme_opens_with_the_two_commands() -> None:
    first = blocks("sh")[0]
    assert [line.split()[:2] for line in first.splitlines()] == [
        ["make", "serve"],
        ["make", "test"],
    ]


def test_the_quick_start_works_as_written(tmp_path: Path) -> None:
    # Run where `make serve` would: ./ephemera-data beside the commands, port 8000 rewritten.
    server = Server(tmp_path / "ephemera-data").start()
    try:
        script = blocks("sh")[1].replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        shell = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shell.returncode == 0, shell.stderr
        assert "identical" in shell.stdout
        assert '"closed":true' in shell.stdout
        assert '"artifact_count":3' in shell.stdout
    finally:
        server.stop()

    library = subprocess.run(
        [sys.executable, "-c", blocks("python")[0]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert library.returncode == 0, library.stderr
    assert "closed=True" in library.stdout
