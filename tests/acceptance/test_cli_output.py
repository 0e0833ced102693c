"""What the `ephemera` command prints for people: tables, sizes, states, help, version."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ephemera import Settings, Store
from ephemera.cli import app
from ephemera.cli.render import size
from ephemera.testing import ManualClock
from tests.cli import ephemera


def all_command_paths() -> list[list[str]]:
    paths: list[list[str]] = [[]]

    def walk(command: object, prefix: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "ephemera")
def test_help_shows_no_type_on_flags(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output


# Commands that read settings only and open no backend.
NO_STORE = [["processors"]]


def test_every_command_that_opens_a_store_takes_the_backend_flags() -> None:
    for path in all_command_paths():
        if path in NO_STORE:
            continue
        help_text = CliRunner().invoke(app, [*path, "--help"], terminal_width=120).output
        if "--data-dir" in help_text:
            assert "--database-url URL" in help_text, path
            assert "--blob-url URL" in help_text, path


def test_version_prints_the_package_version() -> None:
    result = ephemera("--version")
    assert result.returncode == 0
    assert result.stdout == f"ephemera {version('ephemera')}\n"


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**3 + 512 * 1024**2, "3.5 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (None, "-"),
    ],
)
def test_sizes_read_in_binary_units(n: int | None, shown: str) -> None:
    assert size(n) == shown


@pytest.fixture
def populated(data_dir: Path) -> Path:
    """A migrated store with an open session (3 MiB), one past its deadline and one past its
    deadline but under a lease."""
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    earlier = ManualClock(datetime.now(UTC) - timedelta(hours=2))
    with Store.open(Settings(data_dir=data_dir), clock=earlier) as store:
        store.create_session("stale", idle_timeout_s=3600)
        store.create_session("held", idle_timeout_s=3600)
        store.take_lease("held", holder="worker-1", ttl_s=6 * 3600)
    with Store.open(Settings(data_dir=data_dir)) as store:
        store.create_session("cam-1", label="camera one")
        store.put_artifact("cam-1", b"x" * (3 * 1024**2), name="frame.png")
    return data_dir


def test_sessions_past_their_deadline_are_listed_as_expired(populated: Path) -> None:
    listed = json.loads(ephemera("sessions", "list", "--json", data_dir=populated).stdout)
    states = {s["id"]: s["state"] for s in listed["items"]}
    assert states == {"cam-1": "open", "held": "open", "stale": "expired"}
    table = ephemera("sessions", "list", data_dir=populated).stdout
    (stale_row,) = [line for line in table.splitlines() if " stale " in line]
    assert " expired " in stale_row
    (cam_row,) = [line for line in table.splitlines() if " cam-1 " in line]
    assert "3.0 MiB" in cam_row


def test_sessions_show_prints_a_table_with_readable_sizes(populated: Path) -> None:
    shown = ephemera("sessions", "show", "cam-1", data_dir=populated)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"state\s+open", shown.stdout)
    assert re.search(r"artifacts\s+1 \(3\.0 MiB\)", shown.stdout)
    (row,) = [line for line in shown.stdout.splitlines() if "frame.png" in line]
    assert "3.0 MiB" in row
    assert "{" not in shown.stdout


def test_sessions_show_says_expired_for_a_session_past_its_deadline(populated: Path) -> None:
    shown = ephemera("sessions", "show", "stale", data_dir=populated)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"state\s+expired", shown.stdout)
    as_json = json.loads(ephemera("sessions", "show", "stale", "--json", data_dir=populated).stdout)
    assert as_json["session"]["state"] == "expired"
    assert as_json["artifacts"] == []


def test_what_clients_named_prints_as_text_never_as_markup(data_dir: Path) -> None:
    label = "[bold]x[/bold] [link=https://example.invalid]y[/link]"
    name = "[reverse]frame.png"  # file names cannot hold the '/' of a closing tag
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    with Store.open(Settings(data_dir=data_dir)) as store:
        store.create_session("s1", label=label)
        store.put_artifact("s1", b"x", name=name)
    listed = ephemera("sessions", "list", data_dir=data_dir)
    assert label in listed.stdout, listed.stdout
    shown = ephemera("sessions", "show", "s1", data_dir=data_dir)
    assert label in shown.stdout, shown.stdout
    assert name in shown.stdout, shown.stdout


def test_sessions_show_of_a_missing_session_is_exit_1(populated: Path) -> None:
    missing = ephemera("sessions", "show", "nope", "--json", data_dir=populated)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert "session nope not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_stats_prints_tables_not_python_dicts(populated: Path) -> None:
    result = ephemera("stats", data_dir=populated)
    assert result.returncode == 0, result.stderr
    assert "{" not in result.stdout
    assert "'" not in result.stdout
    assert re.search(r"open\s+│\s+3\b", result.stdout)  # sessions by state
    assert re.search(r"persistent\s+│\s+ready\s+│\s+1\s+│\s+3\.0 MiB", result.stdout)
    assert "would delete" in result.stdout


def test_a_dry_run_is_headed_as_what_would_be_deleted(populated: Path) -> None:
    dry = ephemera("cleanup", "idle-sessions", "--dry-run", "--details", data_dir=populated)
    assert dry.returncode == 0, dry.stderr
    header = next(line for line in dry.stdout.splitlines() if "operation" in line)
    assert "would delete" in header
    assert "would free" in header
    assert "cleanup idle-sessions (dry run)" in dry.stdout
    items = dry.stdout[dry.stdout.index("would delete", dry.stdout.index("└")) :]
    assert re.search(r"idle\s+│\s+session\s+│\s+0 B\s+│\s+stale", items)

    real = ephemera("cleanup", "idle-sessions", "--details", data_dir=populated)
    header = next(line for line in real.stdout.splitlines() if "operation" in line)
    assert "would" not in real.stdout
    assert "deleted" in header
    assert "freed" in header
    assert "deleted" in [line.strip() for line in real.stdout.splitlines()]  # the items' title


def test_cleanup_all_shows_a_bar_over_its_operations_on_a_terminal(populated: Path) -> None:
    # FORCE_COLOR makes rich treat the captured stderr as a terminal.
    shown = ephemera("cleanup", "all", "--dry-run", data_dir=populated, env={"FORCE_COLOR": "1"})
    assert shown.returncode == 0, shown.stderr
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.stderr)
    assert "operations" in plain
    assert "5/5" in plain  # the total is known: the operations of `all`
    assert "-:--:--" in plain or "0:00:00" in plain  # the time-remaining column


def test_no_progress_output_off_a_terminal_or_with_json(populated: Path) -> None:
    piped = ephemera("cleanup", "all", "--dry-run", data_dir=populated)
    assert "operations" not in piped.stderr
    as_json = ephemera("cleanup", "all", "--json", data_dir=populated, env={"FORCE_COLOR": "1"})
    assert "operations" not in as_json.stderr
    assert json.loads(as_json.stdout)["operation"] == "all"
