"""Which store a command works on: it never creates one, it names it, and it refuses other
backends than the data dir's deployment recorded."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemera import Settings, Store
from tests.cli import ephemera, tree
from tests.databases import PostgresDatabases

MAINTENANCE = [
    ("stats",),
    ("cleanup", "all"),
    ("cleanup", "expired", "--dry-run"),
    ("sessions", "list"),
    ("sessions", "show", "s1"),
    ("sessions", "close", "s1"),
    ("audit",),
    ("admin-key", "list"),
    ("admin-key", "create", "ops"),
    ("admin-key", "revoke", "ops"),
    ("worker-key", "list"),
]


@pytest.fixture
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    url = postgres_databases.fresh()
    try:
        yield url
    finally:
        postgres_databases.drop(url)


def test_stats_on_an_empty_data_dir_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = ephemera("stats", data_dir=empty)
    assert result.returncode == 2
    assert "no ephemera store in sqlite:///" in result.stderr
    assert "`ephemera migrate` or `ephemera serve`" in result.stderr
    assert result.stdout == ""
    assert tree(empty) == {}


@pytest.mark.parametrize("command", MAINTENANCE, ids=" ".join)
def test_no_maintenance_command_creates_a_store(tmp_path: Path, command: tuple[str, ...]) -> None:
    missing = tmp_path / "nowhere" / "data"
    result = ephemera(*command, data_dir=missing)
    assert result.returncode == 2, result.stderr
    assert "no ephemera store" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_an_empty_postgresql_database_is_no_store_and_stays_empty(
    tmp_path: Path, postgres_databases: PostgresDatabases
) -> None:
    url = postgres_databases.empty()
    try:
        result = ephemera("cleanup", "all", "--database-url", url, data_dir=tmp_path / "data")
        assert result.returncode == 2
        assert "no ephemera store in postgresql+psycopg://" in result.stderr
        # Opening it the way a library user would proves nothing was created in it.
        with pytest.raises(Exception, match="no ephemera store"):
            Store.open(Settings(data_dir=tmp_path / "x", database_url=url), create=False)
    finally:
        postgres_databases.drop(url)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", MAINTENANCE[:8], ids=" ".join)
def test_every_maintenance_command_names_its_backends_on_stderr(
    data_dir: Path, command: tuple[str, ...]
) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    result = ephemera(*command, data_dir=data_dir)
    resolved = data_dir.resolve()
    line = f"ephemera: metadata sqlite:///{resolved}/ephemera.db · blobs file://{resolved}/blobs"
    assert result.stderr.splitlines()[0] == line
    assert line not in result.stdout


def test_json_output_stays_clean_of_the_backend_line(data_dir: Path) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    result = ephemera("stats", "--json", data_dir=data_dir)
    assert result.returncode == 0
    assert json.loads(result.stdout)["sessions"] == {}
    assert result.stderr.startswith("ephemera: metadata sqlite:///")


def test_the_backend_line_and_the_record_hide_passwords(data_dir: Path, postgres_url: str) -> None:
    with_password = postgres_url.replace("postgres@", "postgres:hunter2@")
    result = ephemera("migrate", "--database-url", with_password, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "postgres:***@127.0.0.1" in result.stderr
    assert "hunter2" not in (data_dir / "deployment.json").read_text()

    in_query = f"{postgres_url}?password=hunter3"
    listed = ephemera("sessions", "list", "--database-url", in_query, data_dir=data_dir)
    assert listed.returncode == 0, listed.stderr
    assert "hunter3" not in listed.stderr + listed.stdout
    assert "?password=***" in listed.stderr


def test_serve_and_migrate_record_the_backends_readable_by_the_owner_only(
    data_dir: Path, postgres_url: str
) -> None:
    result = ephemera("migrate", "--database-url", postgres_url, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    record_file = data_dir / "deployment.json"
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    record = json.loads(record_file.read_text())
    assert record["metadata"] == postgres_url.replace("postgresql://", "postgresql+psycopg://")
    assert record["blobs"] is None  # the default directory in the data dir
    assert [p.name for p in data_dir.iterdir()] == ["deployment.json"]


def test_a_postgresql_deployment_refuses_a_command_without_its_database_url(
    data_dir: Path, postgres_url: str
) -> None:
    assert ephemera("migrate", "--database-url", postgres_url, data_dir=data_dir).returncode == 0
    with Store.open(Settings(data_dir=data_dir, database_url=postgres_url)) as store:
        store.create_session("s1")
    before = tree(data_dir)

    refused = ephemera("cleanup", "all", data_dir=data_dir)
    assert refused.returncode == 2
    shown = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    assert f"pass --database-url {shown}" in refused.stderr
    assert "EPHEMERA_DATABASE_URL" in refused.stderr
    assert "`ephemera migrate --move`" in refused.stderr
    assert tree(data_dir) == before  # no SQLite file appeared

    served = ephemera(
        "sessions", "list", "--json", data_dir=data_dir, env={"EPHEMERA_DATABASE_URL": postgres_url}
    )
    assert served.returncode == 0, served.stderr
    assert [s["id"] for s in json.loads(served.stdout)["items"]] == ["s1"]
    before_root = ephemera(
        "--database-url", postgres_url, "sessions", "list", "--json", data_dir=data_dir
    )
    assert [s["id"] for s in json.loads(before_root.stdout)["items"]] == ["s1"]


def test_a_default_deployment_refuses_another_database(data_dir: Path, postgres_url: str) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    refused = ephemera("stats", "--database-url", postgres_url, data_dir=data_dir)
    assert refused.returncode == 2
    assert "drop --database-url and EPHEMERA_DATABASE_URL" in refused.stderr


def test_migrate_without_the_database_url_keeps_a_postgresql_deployment_where_it_is(
    data_dir: Path, postgres_url: str
) -> None:
    assert ephemera("migrate", "--database-url", postgres_url, data_dir=data_dir).returncode == 0
    with Store.open(Settings(data_dir=data_dir, database_url=postgres_url)) as store:
        store.create_session("s1")
    before = tree(data_dir)
    record = (data_dir / "deployment.json").read_text()

    # A rollout that lost EPHEMERA_DATABASE_URL: refused, nothing created or rewritten.
    refused = ephemera("migrate", data_dir=data_dir)
    assert refused.returncode == 2
    shown = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    assert f"pass --database-url {shown}" in refused.stderr
    assert "`ephemera migrate --move`" in refused.stderr
    assert tree(data_dir) == before  # no SQLite file appeared
    assert (data_dir / "deployment.json").read_text() == record

    again = ephemera("migrate", data_dir=data_dir, env={"EPHEMERA_DATABASE_URL": postgres_url})
    assert again.returncode == 0, again.stderr
    assert "(was up to date)" in again.stdout
    listed = ephemera(
        "sessions", "list", "--json", "--database-url", postgres_url, data_dir=data_dir
    )
    assert [s["id"] for s in json.loads(listed.stdout)["items"]] == ["s1"]


def test_migrate_moves_the_deployment_to_new_urls_only_when_told_to(
    data_dir: Path, postgres_url: str
) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    refused = ephemera("migrate", "--database-url", postgres_url, data_dir=data_dir)
    assert refused.returncode == 2
    assert "drop --database-url and EPHEMERA_DATABASE_URL" in refused.stderr
    assert ephemera("stats", data_dir=data_dir).returncode == 0  # still where it was

    moved = ephemera("migrate", "--move", "--database-url", postgres_url, data_dir=data_dir)
    assert moved.returncode == 0, moved.stderr
    assert ephemera("stats", "--database-url", postgres_url, data_dir=data_dir).returncode == 0
    assert ephemera("stats", data_dir=data_dir).returncode == 2


def test_a_damaged_record_is_refused_until_migrate_moves_the_deployment(data_dir: Path) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    (data_dir / "deployment.json").write_text("{not json")
    refused = ephemera("migrate", data_dir=data_dir)
    assert refused.returncode == 3  # as for every command: the record is unusable
    assert "deployment.json is damaged: rewrite it with `ephemera migrate --move`" in (
        refused.stderr
    )
    assert ephemera("migrate", "--move", data_dir=data_dir).returncode == 0
    assert ephemera("stats", data_dir=data_dir).returncode == 0


def test_a_data_dir_moved_elsewhere_is_still_its_deployment(tmp_path: Path) -> None:
    assert ephemera("migrate", data_dir=tmp_path / "a").returncode == 0
    (tmp_path / "a").rename(tmp_path / "b")
    assert ephemera("stats", data_dir=tmp_path / "b").returncode == 0


BAD_FLAGS = [
    (("--database-url", "not a url"), "invalid database URL"),
    (("--database-url", "nosuchdb://x/y"), "unsupported database URL"),
    (("--blob-url", "ftp://host/x"), "unsupported blob store URL scheme"),
    (("--blob-url", "s3://Not_A_Bucket!"), "S3 blob store URL must be"),
]


@pytest.mark.parametrize("command", [("migrate",), ("stats",), ("cleanup", "all")], ids=" ".join)
@pytest.mark.parametrize(("flag", "message"), BAD_FLAGS, ids=lambda v: str(v))
def test_a_bad_backend_flag_is_refused_and_creates_nothing(
    tmp_path: Path, command: tuple[str, ...], flag: tuple[str, str], message: str
) -> None:
    data_dir = tmp_path / "data"
    result = ephemera(*command, *flag, data_dir=data_dir)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()


@pytest.mark.parametrize(("flag", "message"), BAD_FLAGS, ids=lambda v: str(v))
def test_a_bad_backend_flag_changes_nothing_in_an_existing_deployment(
    data_dir: Path, flag: tuple[str, str], message: str
) -> None:
    assert ephemera("migrate", data_dir=data_dir).returncode == 0
    before = tree(data_dir)
    result = ephemera("migrate", *flag, data_dir=data_dir)
    assert result.returncode == 2
    assert message in result.stderr
    assert tree(data_dir) == before


def test_a_bad_setting_in_the_environment_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = ephemera(
        "migrate", data_dir=tmp_path / "data", env={"EPHEMERA_IDLE_TIMEOUT_S": "soon"}
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid settings")
    assert "EPHEMERA_IDLE_TIMEOUT_S" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_an_unreachable_database_is_exit_3_with_one_line(data_dir: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on port 1
    result = ephemera("migrate", "--database-url", url, data_dir=data_dir)
    assert result.returncode == 3
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "cannot reach the database postgresql+psycopg://postgres@127.0.0.1:1/test" in error
    assert "Connection refused" in error
