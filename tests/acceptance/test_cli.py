"""The `ephemera` command, run as a real subprocess."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from ephemera import Settings, Store
from ephemera.errors import Unauthenticated
from ephemera.models import KeyRole
from tests.cli import ephemera
from tests.conftest import Server


def test_admin_key_create_prints_the_key_alone_and_it_works(data_dir: Path) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    created = ephemera("admin-key", "create", "ops", data_dir=data_dir)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n"
    assert key.startswith("epa_")
    with Store.open(Settings(data_dir=data_dir)) as store:
        resolved = store.resolve_key(key)
        assert resolved is not None
        assert (resolved.name, resolved.role) == ("ops", KeyRole.ADMIN)

    listed = ephemera("admin-key", "list", "--json", data_dir=data_dir)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["ops"]
    assert key not in listed.stdout

    again = ephemera("admin-key", "create", "ops", data_dir=data_dir)
    assert again.returncode == 1
    assert again.stderr.splitlines()[-1] == "error: a key named 'ops' already exists"
    assert "Traceback" not in again.stderr

    assert ephemera("admin-key", "revoke", "ops", data_dir=data_dir).returncode == 0
    with Store.open(Settings(data_dir=data_dir)) as store, pytest.raises(Unauthenticated):
        store.resolve_key(key)
    missing = ephemera("admin-key", "revoke", "ops", data_dir=data_dir)
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1].startswith("error: ")
    assert "Traceback" not in missing.stderr


def test_migrate_creates_then_reports_an_up_to_date_schema(data_dir: Path) -> None:
    first = ephemera("migrate", data_dir=data_dir)
    assert first.returncode == 0, first.stderr
    assert "schema at 0012 (was None)" in first.stdout
    second = ephemera("migrate", data_dir=data_dir)
    assert "(was up to date)" in second.stdout


def test_sessions_list_show_and_close(data_dir: Path) -> None:
    with Store.open(Settings(data_dir=data_dir)) as store:
        store.create_session("cam-1", label="camera one")
        artifact = store.put_artifact("cam-1", b"12345", name="frame.png")
        store.create_session("cam-2")

    listed = json.loads(ephemera("sessions", "list", "--json", data_dir=data_dir).stdout)
    assert [(s["id"], s["artifact_count"]) for s in listed["items"]] == [("cam-1", 1), ("cam-2", 0)]
    table = ephemera("sessions", "list", data_dir=data_dir).stdout
    assert "cam-1" in table
    assert "camera one" in table

    shown = json.loads(ephemera("sessions", "show", "cam-1", "--json", data_dir=data_dir).stdout)
    assert shown["session"]["total_bytes"] == 5
    assert shown["session"]["state"] == "open"
    assert [a["id"] for a in shown["artifacts"]] == [artifact.id]

    closed = ephemera("sessions", "close", "cam-1", data_dir=data_dir)
    assert json.loads(closed.stdout)["deleted_bytes"] == 5
    assert not (data_dir / "blobs" / "sessions" / "cam-1").exists()
    gone = ephemera("sessions", "show", "cam-1", data_dir=data_dir)
    assert gone.returncode == 1
    assert "not found" in gone.stderr


@pytest.mark.slow
def test_first_serve_creates_an_admin_key_readable_only_by_its_owner(server: Server) -> None:
    key_file = server.data_dir / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert server.admin_key.startswith("epa_")
    assert server.admin_key in server.log.read_text()  # printed once, at creation
    server.stop()
    restarted = Server(server.data_dir).start()
    try:
        assert restarted.admin_key == server.admin_key
        assert restarted.log.read_text().count("epa_") == 0
    finally:
        restarted.stop()


def test_stats_and_audit_speak_json(data_dir: Path) -> None:
    with Store.open(Settings(data_dir=data_dir)) as store:
        store.create_session("s1")
        store.put_artifact("s1", b"12345", name="a.bin")
    assert ephemera("cleanup", "all", "--dry-run", data_dir=data_dir).returncode == 0
    stats = json.loads(ephemera("stats", "--json", data_dir=data_dir).stdout)
    assert stats["sessions"] == {"open": 1}
    assert stats["usage"]["stored_bytes"] == 5
    assert stats["last_runs"]["all"]["params"] == {"dry_run": True}
    log = json.loads(ephemera("audit", "--json", "--limit", "2", data_dir=data_dir).stdout)
    assert [e["action"] for e in log["items"]] == ["cleanup.all", "cleanup.quota"]
    assert log["items"][0]["actor"].startswith("cli:")
    older = ephemera("audit", "--json", "--cursor", log["next_cursor"], data_dir=data_dir)
    assert json.loads(older.stdout)["items"][0]["action"] == "cleanup.orphaned"
    unknown = ephemera("cleanup", "everything", data_dir=data_dir)
    assert unknown.returncode == 1
    assert "unknown cleanup operation" in unknown.stderr
