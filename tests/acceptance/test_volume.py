"""The local volume: file modes, a full disk, low space, the reserve, emergency cleanup."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from ephemera import Settings, Store
from ephemera.blobs.local import LocalBlobStore
from ephemera.errors import InsufficientStorage, InvalidInput
from ephemera.http import create_app
from ephemera.scheduler import CleanupScheduler
from ephemera.testing import ManualClock
from ephemera.volume import RESERVE_FILE, Volume, check_modes, prepare_data_dir
from tests.cli import ephemera
from tests.conftest import Server, bearer, snapshot
from tests.mounts import tmpfs

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


def test_folders_keep_the_setgid_bit_of_a_shared_data_dir(data_dir: Path, umask: None) -> None:
    data_dir.mkdir()
    os.chmod(data_dir, 0o2750)  # noqa: S103 (group access: files take the dir's group)
    files, folders = fill_a_store(Settings(data_dir=data_dir, file_mode="0640", dir_mode="0750"))
    assert set(folders.values()) == {0o2750}
    assert set(files.values()) == {0o640}


def test_migrate_creates_a_store_with_the_configured_modes(data_dir: Path, umask: None) -> None:
    os.umask(0o077)
    created = ephemera(
        "migrate",
        data_dir=data_dir,
        env={"EPHEMERA_FILE_MODE": "0640", "EPHEMERA_DIR_MODE": "0750"},
    )
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE((data_dir / "ephemera.db").stat().st_mode) == 0o640


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


# -- a small, full volume -------------------------------------------------------------------


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, so the test can fill it."""
    with tmpfs(tmp_path / "data", "size=16m,mode=0700") as mount_point:
        yield mount_point


def artifact_rows(data_dir: Path) -> int:
    db = sqlite3.connect(f"file:{data_dir / 'ephemera.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("select count(*) from artifacts").fetchone()[0])
    finally:
        db.close()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_up(path: Path) -> None:
    """Take every free byte, as another writer on the volume would."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
        except OSError:
            pass
        chunk = 4096
        while chunk:
            try:
                f.write(bytes(chunk))
            except OSError:
                chunk //= 2
    assert free_bytes(path.parent) == 0


def test_a_blob_write_on_a_full_volume_is_insufficient_storage_and_leaves_nothing(
    small_volume: Path,
) -> None:
    blobs = LocalBlobStore(small_volume / "blobs")
    writer = blobs.writer("sessions/s/a")

    def write_forever() -> None:
        while True:
            writer.write(bytes(MiB))

    with pytest.raises(InsufficientStorage, match="the volume is full"):
        write_forever()
    assert list(blobs.list_staged()) == []
    assert list(blobs.list()) == []


def test_a_database_write_on_a_full_volume_is_insufficient_storage(
    small_volume: Path, clock: ManualClock
) -> None:
    settings = Settings(data_dir=small_volume, reserve_bytes=0, low_space_bytes=0)
    with Store.open(settings, clock=clock) as store:
        fill_up(small_volume / "filler")

        def write_rows_forever() -> None:
            for n in range(10_000):
                store.create_session(session_id=f"s{n}", metadata={"pad": "x" * 2000})

        with pytest.raises(InsufficientStorage, match="database volume is full") as raised:
            write_rows_forever()
        assert raised.value.code == "insufficient_storage"


def test_uploads_are_refused_before_the_last_reserve_bytes(
    small_volume: Path, clock: ManualClock
) -> None:
    settings = Settings(data_dir=small_volume, reserve_bytes=4 * MiB, low_space_bytes=0)
    with Store.open(settings, clock=clock) as store:
        store.create_session(session_id="s")
        while free_bytes(small_volume) >= 4 * MiB:
            store.put_artifact("s", bytes(MiB), name="a.bin")
        before = snapshot(store)
        with pytest.raises(InsufficientStorage, match="kept for cleanup; nothing was stored"):
            store.put_artifact("s", b"x", name="b.bin")
        assert snapshot(store) == before


def test_an_upload_larger_than_the_free_space_is_insufficient_storage_and_stores_nothing(
    small_volume: Path, clock: ManualClock
) -> None:
    settings = Settings(data_dir=small_volume, reserve_bytes=0, low_space_bytes=0)
    with Store.open(settings, clock=clock) as store:
        store.create_session(session_id="s")
        store.put_artifact("s", bytes(MiB), name="a.bin")
        before = snapshot(store)
        with pytest.raises(InsufficientStorage, match="the volume is full"):
            store.put_artifact("s", (bytes(MiB) for _ in range(32)), name="big.bin")
        assert snapshot(store) == before
        assert store.put_artifact("s", bytes(MiB), name="b.bin").size == MiB


def test_ready_reports_low_space(small_volume: Path, clock: ManualClock) -> None:
    settings = Settings(data_dir=small_volume, reserve_bytes=0, low_space_bytes=8 * MiB)
    with Store.open(settings, clock=clock) as store:
        store.check_ready()
        (small_volume / "filler").write_bytes(bytes(10 * MiB))
        with pytest.raises(InsufficientStorage, match=r"low space: .* free on .*threshold 8.0"):
            store.check_ready()


@pytest.mark.slow
def test_a_full_volume_answers_507_reports_not_ready_cleans_up_and_recovers(
    small_volume: Path,
) -> None:
    env = {
        "EPHEMERA_RESERVE_BYTES": str(1 * MiB),
        "EPHEMERA_LOW_SPACE_BYTES": str(3 * MiB),
        "EPHEMERA_SCHEDULED_CLEANUP": "false",  # the cleanup here is the admin's
        "EPHEMERA_WORKERS": "0",
        # Credentials idle longer than this have their use written on the next request.
        "EPHEMERA_ACTIVITY_WRITE_INTERVAL_S": "0.5",
    }
    server = Server(small_volume, env).start()
    try:
        assert (small_volume / RESERVE_FILE).stat().st_size == MiB
        with httpx.Client(base_url=server.api, timeout=30) as http:
            created = http.post("/sessions", json={"id": "cam"}, headers=server.admin())
            auth = bearer(created.json()["token"])

            def upload(name: str, size: int) -> httpx.Response:
                return http.post(
                    "/sessions/cam/artifacts",
                    params={"name": name, "expires_in_s": "2"},
                    content=bytes(size),
                    headers=auth,
                )

            stored = 0
            while (answer := upload(f"f{stored}.bin", MiB)).status_code == 201:
                stored += 1
            assert stored >= 8
            assert answer.status_code == 507
            assert answer.json()["error"]["code"] == "insufficient_storage"
            assert "nothing was stored" in answer.json()["error"]["message"]
            listed = http.get("/sessions/cam/artifacts", headers=auth).json()["items"]
            assert len(listed) == stored
            assert artifact_rows(small_volume) == stored
            assert os.listdir(small_volume / "blobs" / "staging") == []

            ready = httpx.get(f"{server.url}/readyz")
            assert ready.status_code == 503
            assert "low space" in ready.json()["status"]

            # Whatever space is left, another writer takes: the volume is 100% full.
            fill_up(small_volume / "filler")
            time.sleep(2.5)  # the uploads expire; the admin key is idle past the interval
            cleaned = http.post("/admin/cleanup/all", headers=server.admin())
            assert cleaned.status_code == 200, cleaned.text
            assert cleaned.json()["totals"]["deleted_count"] == stored
            assert cleaned.json()["errors"] == []
            assert free_bytes(small_volume) >= stored * MiB
            assert not (small_volume / RESERVE_FILE).exists()  # spent on the cleanup

            assert httpx.get(f"{server.url}/readyz").status_code == 200
            assert upload("after.bin", MiB).status_code == 201

            # The reserve is taken again (as the scheduler, off here, would), another writer
            # fills the volume to the last byte, and the session token goes idle: the client
            # can still close its session, which frees its bytes.
            settings = Settings(data_dir=small_volume, reserve_bytes=MiB, low_space_bytes=3 * MiB)
            assert Volume(settings).restore_reserve()
            fill_up(small_volume / "filler-2")
            time.sleep(1.0)  # twice the interval
            closed = http.delete("/sessions/cam", headers=auth)
            assert closed.status_code == 200, closed.text
            assert closed.json()["deleted_bytes"] == MiB
            assert http.get("/sessions/cam", headers=server.admin()).status_code == 404
            assert not (small_volume / RESERVE_FILE).exists()  # spent on the close
    finally:
        server.stop()


def test_idle_credentials_still_open_the_store_on_a_full_volume_and_it_is_logged_once(
    small_volume: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ephemera.store")

    def activity_logs() -> list[str]:
        return [r.levelname for r in caplog.records if r.getMessage().startswith("activity")]

    settings = Settings(data_dir=small_volume, reserve_bytes=0, low_space_bytes=0)
    with Store.open(settings, clock=clock) as store:
        key = store.create_key("ops")
        token = store.create_session(session_id="s").token
        artifact = store.put_artifact("s", b"bytes", name="a.bin")
        fill_up(small_volume / "filler")
        with pytest.raises(InsufficientStorage):  # the volume really refuses writes
            store.create_session(session_id="t")
        for _ in range(3):
            clock.advance(60)  # idle far past activity_write_interval_s
            assert store.resolve_key(key) is not None
            assert store.authenticate("s", token) is None
            assert store.read_artifact("s", artifact.id) == b"bytes"
        assert activity_logs() == ["WARNING"]
        (small_volume / "filler").unlink()
        clock.advance(60)
        store.authenticate("s", token)
        assert store.get_session("s").last_activity_at == clock.now()
        assert activity_logs() == ["WARNING", "INFO"]


def test_a_store_opens_and_cleans_up_on_a_volume_full_to_the_last_byte(
    small_volume: Path, clock: ManualClock
) -> None:
    settings = Settings(data_dir=small_volume, reserve_bytes=1 * MiB, low_space_bytes=3 * MiB)
    assert prepare_data_dir(settings) == []
    with Store.open(settings, clock=clock) as store:
        store.create_session(session_id="s", idle_timeout_s=None)
        for n in range(8):
            store.put_artifact("s", bytes(MiB), name=f"{n}.bin", expires_in_s=60)
    fill_up(small_volume / "filler")  # with the database closed: its -shm is gone
    clock.advance(120)
    with Store.open(settings, clock=clock) as store:
        report = store.cleanup("all")
        assert (report.deleted_count, report.errors) == (8, [])
    assert free_bytes(small_volume) >= 8 * MiB


# -- emergency cleanup ----------------------------------------------------------------------


def actors_of(store: Store, action: str) -> list[str]:
    return [entry.actor for entry in store.audit_log(action=action).items]


def test_low_space_runs_an_emergency_cleanup_of_expired_then_quota(
    data_dir: Path, clock: ManualClock
) -> None:
    settings = Settings(
        data_dir=data_dir,
        low_space_bytes=2**62,  # always low
        reserve_bytes=0,
        quota_high_water_bytes=500,
        quota_low_water_bytes=0,
    )
    with Store.open(settings, clock=clock) as store:
        store.create_session(session_id="old")
        store.put_artifact("old", b"x" * 600, name="a.bin", expires_in_s=60)
        store.put_artifact("old", b"y" * 600, name="b.bin")
        clock.advance(120)
        scheduler = CleanupScheduler(store, emergency_every_s=3600)
        reports = scheduler.watch_space()
        assert [(r.operation, r.deleted_count) for r in reports] == [("expired", 1), ("quota", 1)]
        entries = store.audit_log().items
        assert {(e.actor, e.action) for e in entries} == {
            ("scheduler:emergency", "cleanup.expired"),
            ("scheduler:emergency", "cleanup.quota"),
        }
        assert scheduler.watch_space() == []  # at most once per emergency_every_s


def test_the_scheduler_loop_watches_space_between_ticks(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, low_space_bytes=2**62, reserve_bytes=0)
    with Store.open(settings) as store:
        scheduler = CleanupScheduler(store, interval_s=3600, space_poll_s=0.02)
        scheduler.start()
        try:
            deadline = time.monotonic() + 10
            while "scheduler:emergency" not in actors_of(store, "cleanup.quota"):
                assert time.monotonic() < deadline, "no emergency cleanup ran"
                time.sleep(0.02)
        finally:
            scheduler.stop(timeout_s=5)
        # The tick at start-up ran `all`; the emergency ran between ticks, without waiting.
        assert actors_of(store, "cleanup.all") == ["scheduler"]
        assert actors_of(store, "cleanup.expired")[0] == "scheduler:emergency"


def test_the_reserve_is_released_for_cleanup_and_taken_again_once_space_is_back(
    small_volume: Path, clock: ManualClock
) -> None:
    settings = Settings(data_dir=small_volume, reserve_bytes=2 * MiB, low_space_bytes=4 * MiB)
    assert prepare_data_dir(settings) == []
    reserve = small_volume / RESERVE_FILE
    assert reserve.stat().st_size == 2 * MiB
    assert stat.S_IMODE(reserve.stat().st_mode) == 0o600
    with Store.open(settings, clock=clock) as store:
        scheduler = CleanupScheduler(store)
        store.cleanup("all")
        assert reserve.exists()  # space is not low: the reserve stays
        (small_volume / "filler").write_bytes(bytes(free_bytes(small_volume) - 2 * MiB))
        store.cleanup("all", dry_run=True)
        assert reserve.exists()  # a dry run writes nothing and needs no room
        with pytest.raises(InvalidInput):
            store.cleanup("everything")
        assert reserve.exists()  # a bad request changes nothing
        store.cleanup("all")
        assert not reserve.exists()
        scheduler.watch_space()
        assert not reserve.exists()  # still low: taking it again would make things worse
        (small_volume / "filler").unlink()
        scheduler.watch_space()
        assert reserve.stat().st_size == 2 * MiB


def test_metrics_show_free_space_and_the_threshold(small_volume: Path) -> None:
    settings = Settings(data_dir=small_volume, reserve_bytes=0, low_space_bytes=3 * MiB)
    with Store.open(settings) as store:
        (small_volume / "filler").write_bytes(bytes(10 * MiB))
        samples = dict(
            line.split(" ", 1)
            for line in store.metrics.render().decode().splitlines()
            if line.startswith("ephemera_volume_")
        )
        free = free_bytes(small_volume)
    assert float(samples["ephemera_volume_free_bytes"]) == free
    assert float(samples["ephemera_volume_low_space_bytes"]) == 3 * MiB


def test_the_reserve_follows_its_setting_at_start_up(data_dir: Path) -> None:
    reserve = data_dir / RESERVE_FILE
    data_dir.mkdir(mode=0o700)
    (data_dir / f"{RESERVE_FILE}.partial").write_bytes(b"left by a crash")
    assert prepare_data_dir(Settings(data_dir=data_dir, reserve_bytes=2 * MiB)) == []
    assert reserve.stat().st_size == 2 * MiB
    assert sorted(p.name for p in data_dir.iterdir()) == [RESERVE_FILE]
    prepare_data_dir(Settings(data_dir=data_dir, reserve_bytes=MiB))
    assert reserve.stat().st_size == MiB
    prepare_data_dir(Settings(data_dir=data_dir, reserve_bytes=0))
    assert not reserve.exists()


def test_the_api_document_lists_507_for_uploads(store: Store) -> None:
    with TestClient(create_app(store)) as client:
        document = client.get("/openapi.json").json()
    responses = document["paths"]["/api/v1/sessions/{session_id}/artifacts"]["post"]["responses"]
    assert responses["507"]["description"] == "The volume is full; nothing was stored"


def test_no_volume_is_watched_when_no_backend_is_local(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url="postgresql://127.0.0.1/test",
        blob_url="memory://",
        low_space_bytes=2**62,
    )
    volume = Volume(settings)
    assert volume.free_bytes() is None
    assert volume.low_space() is None
    assert volume.restore_reserve() is False
