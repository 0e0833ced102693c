"""The Store: sessions and artifacts through the library API."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

import pytest
from sqlalchemy import event

from ephemera import (
    ChecksumMismatch,
    Conflict,
    InvalidInput,
    NotFound,
    StorageClass,
    Store,
    TooLarge,
    Unauthenticated,
)
from ephemera.blobs import artifact_key
from ephemera.testing import ManualClock
from tests.conftest import MakeSettings, database_dump, snapshot

CONTRACT = True


def test_a_new_session_gets_a_uuid_and_a_token_stored_only_as_a_hash(store: Store) -> None:
    created = store.create_session(label="line 3")
    assert uuid.UUID(created.session.id).version == 7
    assert created.token.startswith("eps_")
    assert len(created.token) >= 40
    dump = database_dump(store)
    assert created.token not in dump
    assert hashlib.sha256(created.token.encode()).hexdigest() in dump


def test_a_client_chosen_id_of_a_live_session_is_a_conflict(store: Store) -> None:
    store.create_session("station-1")
    with pytest.raises(Conflict):
        store.create_session("station-1")


def test_a_closed_id_can_be_created_again_and_starts_empty(store: Store) -> None:
    store.create_session("station-1")
    store.put_artifact("station-1", b"old secret", name="a.bin")
    store.close_session("station-1")
    again = store.create_session("station-1")
    assert again.session.artifact_count == 0
    assert store.list_artifacts("station-1").items == []


def test_an_idle_session_answers_as_gone_at_once_and_its_id_starts_afresh(
    store: Store, clock: ManualClock
) -> None:
    created = store.create_session("s1", idle_timeout_s=60)
    store.put_artifact("s1", b"x" * 10, name="a.bin")
    clock.advance(59)
    store.authenticate("s1", created.token)
    clock.advance(59)  # activity 59 s ago moved the deadline: still live
    assert store.get_session("s1").id == "s1"
    clock.advance(61)
    with pytest.raises(NotFound):
        store.authenticate("s1", created.token)
    with pytest.raises(NotFound):
        store.list_artifacts("s1")
    fresh = store.create_session("s1")
    assert fresh.session.artifact_count == 0
    assert list(store.blobs.list("sessions/s1/")) == []


def test_max_age_bounds_a_session_however_active(store: Store, clock: ManualClock) -> None:
    created = store.create_session("s1", idle_timeout_s=60, max_age_s=100)
    for _ in range(3):
        clock.advance(30)
        store.authenticate("s1", created.token)
    clock.advance(11)
    with pytest.raises(NotFound):
        store.authenticate("s1", created.token)


def test_null_timeouts_mean_never(store: Store, clock: ManualClock) -> None:
    store.create_session("s1", idle_timeout_s=None, max_age_s=None)
    clock.advance(10 * 365 * 86400)
    assert store.get_session("s1").expires_at is None


def test_activity_is_written_at_most_once_per_interval(store: Store, clock: ManualClock) -> None:
    created = store.create_session("s1")
    first = store.get_session("s1").last_activity_at
    clock.advance(1)
    store.authenticate("s1", created.token)
    assert store.get_session("s1").last_activity_at == first
    clock.advance(5)
    store.authenticate("s1", created.token)
    assert store.get_session("s1").last_activity_at == clock.now()


def test_wrong_token_unknown_id_and_hostile_id_are_the_same_not_found(store: Store) -> None:
    store.create_session("s1")
    other = store.create_session("s2")
    for session_id, credential in [
        ("s1", other.token),
        ("s1", "eps_guess"),
        ("nope", other.token),
        ("../s1", other.token),
    ]:
        with pytest.raises(NotFound) as caught:
            store.authenticate(session_id, credential)
        assert caught.value.message == f"session {session_id} not found"


def test_an_admin_key_opens_every_session(store: Store) -> None:
    key = store.create_key("ops")
    store.create_session("s1")
    store.authenticate("s1", key)
    store.revoke_key("ops")
    with pytest.raises(Unauthenticated):  # a revoked key is no wrong session token
        store.authenticate("s1", key)


@pytest.mark.parametrize(
    "source",
    [
        lambda data: data,
        lambda data: io.BytesIO(data),
        lambda data: iter([data[:7], b"", data[7:100], data[100:]]),
    ],
    ids=["bytes", "file", "chunks"],
)
def test_put_records_exact_size_and_sha256(store: Store, source: object) -> None:
    store.create_session("s1")
    data = bytes(range(256)) * 1000
    artifact = store.put_artifact("s1", source(data), name="frame.png", kind="golden")  # type: ignore[operator]
    assert artifact.size == len(data)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.content_type == "image/png"
    assert store.read_artifact("s1", artifact.id) == data
    assert store.get_artifact("s1", artifact.id) == artifact


def test_a_checksum_mismatch_stores_nothing(store: Store) -> None:
    store.create_session("s1")
    before = snapshot(store)
    with pytest.raises(ChecksumMismatch):
        store.put_artifact("s1", b"abc", name="a.bin", sha256="0" * 64)
    assert snapshot(store) == before


def test_a_matching_checksum_is_accepted_in_any_case(store: Store) -> None:
    store.create_session("s1")
    digest = hashlib.sha256(b"abc").hexdigest().upper()
    assert store.put_artifact("s1", b"abc", name="a.bin", sha256=digest).size == 3


def test_an_upload_over_the_limit_stores_nothing(
    make_settings: MakeSettings, clock: ManualClock
) -> None:
    settings = make_settings(max_upload_bytes=1000)
    with Store.open(settings, clock=clock) as store:
        store.create_session("s1")
        before = snapshot(store)
        with pytest.raises(TooLarge):
            store.put_artifact("s1", iter([b"x" * 600, b"x" * 600]), name="a.bin")
        assert snapshot(store) == before
        assert store.put_artifact("s1", b"x" * 1000, name="a.bin").size == 1000


def test_the_session_quota_refuses_what_would_exceed_it(
    make_settings: MakeSettings, clock: ManualClock
) -> None:
    settings = make_settings(session_quota_bytes=100)
    with Store.open(settings, clock=clock) as store:
        store.create_session("s1")
        store.put_artifact("s1", b"x" * 60, name="a.bin")
        before = snapshot(store)
        with pytest.raises(TooLarge):
            store.put_artifact("s1", b"x" * 41, name="b.bin")
        assert snapshot(store) == before
        store.put_artifact("s1", b"x" * 40, name="b.bin")


def test_temporary_artifacts_carry_their_expiry(store: Store, clock: ManualClock) -> None:
    store.create_session("s1")
    default = store.put_artifact("s1", b"x", name="a.bin", storage="temporary")
    assert default.storage_class is StorageClass.TEMPORARY
    assert default.expires_at is not None
    assert (default.expires_at - clock.now()).total_seconds() == 24 * 3600
    short = store.put_artifact("s1", b"x", name="b.bin", expires_in_s=60)
    assert short.storage_class is StorageClass.TEMPORARY
    assert short.expires_at is not None
    assert (short.expires_at - clock.now()).total_seconds() == 60
    kept = store.put_artifact("s1", b"x", name="c.bin")
    assert kept.storage_class is StorageClass.PERSISTENT
    assert kept.expires_at is None
    with pytest.raises(InvalidInput):
        store.put_artifact("s1", b"x", name="d.bin", storage="persistent", expires_in_s=5)


def test_listing_pages_with_a_cursor_and_filters_by_kind(store: Store) -> None:
    store.create_session("s1")
    ids = [
        store.put_artifact("s1", b"x", name=f"{i}.bin", kind="golden" if i % 2 else "input").id
        for i in range(7)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_artifacts("s1", cursor=cursor, limit=3)
        seen += [a.id for a in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    goldens = store.list_artifacts("s1", kind="golden").items
    assert [a.id for a in goldens] == ids[1::2]


def test_deleting_an_artifact_removes_its_bytes_and_record(store: Store) -> None:
    store.create_session("s1")
    artifact = store.put_artifact("s1", b"abc", name="a.bin")
    store.delete_artifact("s1", artifact.id)
    with pytest.raises(NotFound):
        store.get_artifact("s1", artifact.id)
    with pytest.raises(NotFound):
        store.delete_artifact("s1", artifact.id)
    assert list(store.blobs.list("sessions/s1/")) == []


def test_artifacts_of_one_session_are_not_reachable_through_another(store: Store) -> None:
    store.create_session("s1")
    store.create_session("s2")
    artifact = store.put_artifact("s1", b"secret", name="a.bin")
    with pytest.raises(NotFound):
        store.get_artifact("s2", artifact.id)
    with pytest.raises(NotFound):
        store.delete_artifact("s2", artifact.id)
    assert store.read_artifact("s1", artifact.id) == b"secret"


def test_closing_reports_and_leaves_nothing_behind(store: Store) -> None:
    store.create_session("s1")
    for i in range(5):
        store.put_artifact("s1", b"x" * (i + 1), name=f"{i}.bin")
    report = store.close_session("s1")
    assert (report.closed, report.artifact_count, report.deleted_bytes) == (True, 5, 15)
    assert report.storage_removed
    assert store.catalog.table_row_counts()["sessions"] == 0
    assert store.catalog.table_row_counts()["artifacts"] == 0
    assert not (store.settings.data_dir / "blobs" / "sessions" / "s1").exists()
    with pytest.raises(NotFound):
        store.close_session("s1")


def test_a_close_takes_two_transactions_mark_then_drop(store: Store) -> None:
    store.create_session("s1")
    store.put_artifact("s1", b"abc", name="a.bin")
    transactions: list[list[str]] = []
    statements: list[str] = []

    def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split()
        verb = words[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE"):
            statements.append(f"{verb} {words[2 if verb != 'UPDATE' else 1]}")
        else:
            statements.append(verb)

    def committed(_conn: Any) -> None:
        if statements:
            transactions.append(statements.copy())
            statements.clear()

    engine = store.catalog.engine
    event.listen(engine, "before_cursor_execute", executed)
    event.listen(engine, "commit", committed)
    try:
        store.close_session("s1")
    finally:
        event.remove(engine, "before_cursor_execute", executed)
        event.remove(engine, "commit", committed)
    # Every transaction counts, reads too: one to mark, one to drop, nothing else.
    assert len(transactions) == 2, transactions
    mark, drop = transactions
    assert "UPDATE sessions" in mark
    # The session's closed event is written in the transaction that drops it, last.
    writes = [s for s in drop if s != "SELECT"]
    assert writes[-2:] == ["DELETE sessions", "INSERT events"]


def test_recover_finishes_a_close_interrupted_after_the_mark(store: Store) -> None:
    store.create_session("s1")
    store.put_artifact("s1", b"abc", name="a.bin")
    store.catalog.begin_close("s1", store.clock.now())  # the process dies here
    with pytest.raises(NotFound):
        store.get_session("s1")
    assert store.recover() == (1, 0)
    assert store.catalog.table_row_counts()["sessions"] == 0
    assert list(store.blobs.list("sessions/")) == []


def test_recover_finishes_an_interrupted_artifact_delete(store: Store) -> None:
    store.create_session("s1")
    artifact = store.put_artifact("s1", b"abc", name="a.bin")
    store.catalog.mark_artifact_deleting("s1", artifact.id, store.clock.now())  # dies here
    assert store.list_artifacts("s1").items == []
    assert store.recover() == (0, 1)
    assert list(store.blobs.list("sessions/s1/")) == []


def test_an_upload_racing_a_close_leaves_no_bytes_and_no_record(store: Store) -> None:
    store.create_session("s1")
    upload = store.begin_upload("s1", name="late.bin")
    upload.write(b"x" * 1000)
    store.close_session("s1")
    with pytest.raises(NotFound):
        upload.commit()
    assert store.catalog.table_row_counts()["artifacts"] == 0
    assert list(store.blobs.list("sessions/")) == []
    assert list(store.blobs.list_staged()) == []


def test_pending_uploads_are_invisible(store: Store) -> None:
    store.create_session("s1")
    upload = store.begin_upload("s1", name="a.bin")
    upload.write(b"partial")
    assert store.list_artifacts("s1").items == []
    assert store.get_session("s1").artifact_count == 0
    with pytest.raises(NotFound):
        store.get_artifact("s1", upload.artifact_id)
    upload.abort()
    assert store.catalog.table_row_counts()["artifacts"] == 0
    assert list(store.blobs.list_staged()) == []


def test_a_failed_write_leaves_nothing(store: Store) -> None:
    store.create_session("s1")

    def broken() -> object:
        yield b"abc"
        raise RuntimeError("source failed")

    before = snapshot(store)
    with pytest.raises(RuntimeError):
        store.put_artifact("s1", broken(), name="a.bin")  # type: ignore[arg-type]
    assert snapshot(store) == before


def test_keys_derive_from_ids_only(store: Store) -> None:
    store.create_session("s1")
    artifact = store.put_artifact("s1", b"abc", name="report (final).pdf")
    assert [b.key for b in store.blobs.list("sessions/")] == [artifact_key("s1", artifact.id)]
