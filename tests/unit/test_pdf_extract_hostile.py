"""Hostile documents and CSVs: each a clear task failure with no output left behind, or a
bounded run; never a hang or a memory spike. Tasks run through a real store and worker, so
"nothing left behind" is what a client would see."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ephemera import Store
from ephemera.models import Task, TaskState
from ephemera.worker import Worker
from tests.bol import (
    bol_pdf,
    encrypted_pdf,
    form_without_fields_pdf,
    garbage_xref_pdf,
    many_pages_pdf,
    owner_locked_pdf,
    table_pdf,
    truncated_pdf,
)
from tests.documents import bomb

GiB = 1024**3
MiB = 1024**2
SID = "docs"


def peak_rss_reset() -> None:
    """Start a new peak: the kernel's high-water mark of this process's resident memory."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) * 1024


def current_rss() -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert match
    return int(match.group(1)) * 1024


@pytest.fixture
def session(store: Store) -> Store:
    store.create_session(SID)
    return store


def run_task(
    store: Store, processor: str, inputs: dict[str, bytes], params: dict[str, Any] | None = None
) -> Task:
    ids = [store.put_artifact(SID, data, name=name).id for name, data in inputs.items()]
    if processor == "bol-reconcile":
        params = {"expected": ids[0], **(params or {})}
    task = store.submit_task(SID, processor, ids, params or {})
    assert Worker(store, name="test").run_one()
    return store.get_task(SID, task.id)


def assert_failed_leaving_nothing(store: Store, task: Task, message: str) -> None:
    assert task.state is TaskState.FAILED, task.result
    assert task.error is not None
    assert task.error == message or re.fullmatch(message, task.error), task.error
    assert task.outputs == ()
    assert store.list_artifacts(SID, kind="output").items == []


def manifest() -> bytes:
    return table_pdf("Manifest", "Two pallets.", [["a", "b"], ["1", "2"]])


def test_an_encrypted_pdf_fails_naming_it(session: Store) -> None:
    task = run_task(
        session, "pdf-extract", {"good.pdf": manifest(), "locked.pdf": encrypted_pdf(manifest())}
    )
    assert_failed_leaving_nothing(
        session, task, "locked.pdf: is encrypted; a password is not supported"
    )


def test_a_pdf_locked_only_against_editing_opens_without_a_password(session: Store) -> None:
    task = run_task(session, "pdf-extract", {"owner.pdf": owner_locked_pdf(manifest())})
    assert task.state is TaskState.SUCCEEDED, task.error
    assert task.result is not None
    assert task.result["tables"] == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (garbage_xref_pdf(manifest()), r"bad\.pdf: is not a readable PDF \(.+\)"),
        (truncated_pdf(manifest()), r"bad\.pdf: is not a readable PDF \(.+\)"),
        (b"bol,weight\nB-1,3\n", r"bad\.pdf: is not a readable PDF \(no %PDF header\)"),
        (b"", r"bad\.pdf: is not a readable PDF \(no %PDF header\)"),
    ],
    ids=["garbage-xref", "truncated", "a-csv", "empty"],
)
def test_a_malformed_pdf_fails_naming_it(session: Store, data: bytes, message: str) -> None:
    task = run_task(session, "pdf-extract", {"good.pdf": manifest(), "bad.pdf": data})
    assert_failed_leaving_nothing(session, task, message)


def test_a_form_without_fields_extracts_with_no_fields(session: Store) -> None:
    task = run_task(session, "pdf-extract", {"form.pdf": form_without_fields_pdf()})
    assert task.state is TaskState.SUCCEEDED, task.error
    (output,) = task.outputs
    extracted = session.read_artifact(SID, output.artifact_id)
    assert b'"fields": {}' in extracted
    assert b"STRAIGHT BILL OF LADING" in extracted


@pytest.fixture(scope="module")
def ten_thousand_pages() -> bytes:
    return many_pages_pdf(10_000)


def test_ten_thousand_pages_fail_before_any_page_is_read(
    session: Store, ten_thousand_pages: bytes
) -> None:
    started = time.monotonic()
    task = run_task(session, "pdf-extract", {"huge.pdf": ten_thousand_pages})
    assert time.monotonic() - started < 5
    assert_failed_leaving_nothing(
        session,
        task,
        "huge.pdf: has 10000 pages, more than the limit of 2000; "
        "set pages to read only the first ones",
    )
    assert task.progress_done == 0


def test_reading_the_first_pages_of_ten_thousand_keeps_memory_flat(
    session: Store, ten_thousand_pages: bytes
) -> None:
    """2,000 pages read one at a time: the peak memory grows by a few MiB, as for one page
    (pdfminer's caches, kept, would hold every page read)."""
    peak_rss_reset()
    before = current_rss()
    started = time.monotonic()
    task = run_task(session, "pdf-extract", {"huge.pdf": ten_thousand_pages}, {"pages": 2000})
    elapsed = time.monotonic() - started
    growth = peak_rss() - before
    assert task.state is TaskState.SUCCEEDED, task.error
    assert task.result is not None
    (document,) = task.result["documents"]
    assert (document["pages"], document["truncated"]) == (2000, True)
    assert (task.progress_done, task.progress_total) == (2000, 2000)
    assert growth < 48 * MiB, f"peak memory grew by {growth / MiB:.1f} MiB"
    assert elapsed < 30


def test_a_page_tree_that_understates_its_pages_fails_at_the_ceiling_leaving_nothing(
    session: Store,
) -> None:
    """The first document's JSON and CSV are stored before the second one fails: the
    failed task's outputs are discarded all the same."""
    liar = many_pages_pdf(2001, declared=3)
    task = run_task(session, "pdf-extract", {"first.pdf": manifest(), "liar.pdf": liar})
    assert_failed_leaving_nothing(session, task, "liar.pdf: has more than 2000 pages")


def test_a_compressed_bomb_fails_at_the_page_stream_limit_in_bounded_memory(
    session: Store,
) -> None:
    """A page of a few hundred KiB whose content inflates to 384 MiB: refused while its
    stream is measured in small chunks, before pdfminer inflates it whole."""
    document = bomb(384)
    assert len(document) < 512 * 1024
    # Warm: the libraries loaded and their first allocations made, outside the measure.
    assert run_task(session, "pdf-extract", {"warm.pdf": bomb(8)}).state is TaskState.SUCCEEDED
    for artifact in session.list_artifacts(SID, kind="output").items:
        session.delete_artifact(SID, artifact.id)
    peak_rss_reset()
    before = current_rss()
    task = run_task(session, "pdf-extract", {"good.pdf": manifest(), "bomb.pdf": document})
    growth = peak_rss() - before
    assert_failed_leaving_nothing(
        session, task, "bomb.pdf: page 1 expands past the limit of 64 MiB"
    )
    assert growth < 32 * MiB, f"peak memory grew by {growth / MiB:.1f} MiB"


def test_a_page_within_the_stream_limit_is_read(session: Store) -> None:
    task = run_task(session, "pdf-extract", {"spaces.pdf": bomb(8)})
    assert task.state is TaskState.SUCCEEDED, task.error


# -- the expected shipments' CSV ------------------------------------------------------------


def bol() -> bytes:
    return bol_pdf({"bol_number": "B-1", "weight_kg": "12"})


@pytest.mark.parametrize(
    "csv_data",
    [b"\xef\xbb\xbfbol_number,weight_kg\r\nB-1,12\r\n", b"bol_number;weight_kg\nB-1;12\n"],
    ids=["bom", "semicolons"],
)
def test_csv_exports_with_a_bom_or_semicolons_reconcile(session: Store, csv_data: bytes) -> None:
    task = run_task(
        session,
        "bol-reconcile",
        {"expected.csv": csv_data, "b.pdf": bol()},
        {"key_column": "bol_number"},
    )
    assert task.state is TaskState.SUCCEEDED, task.error
    assert task.result is not None
    assert task.result["reconciled"] is True


def test_a_ragged_csv_fails_naming_the_line(session: Store) -> None:
    ragged = b"bol_number,weight_kg\nB-1,12\nB-2,13,extra\n"
    task = run_task(
        session,
        "bol-reconcile",
        {"expected.csv": ragged, "b.pdf": bol()},
        {"key_column": "bol_number"},
    )
    assert_failed_leaving_nothing(
        session, task, "expected.csv: line 3 has 3 fields, the header has 2"
    )


def gibibyte_of_csv() -> Iterator[bytes]:
    """1 GiB of distinct shipments, 1 KiB a row (a long notes column), made as it is read."""
    header = b"bol_number,weight_kg,notes\n"
    notes = b"x" * (1024 - len(b"B-0000000,12.5,\n"))
    yield header
    left, number = GiB - len(header), 0
    while left:
        rows = b"".join(b"B-%07d,12.5,%s\n" % (number + i, notes) for i in range(1024))
        number += 1024
        yield rows[:left]
        left -= min(left, len(rows))


def test_a_gibibyte_of_csv_stops_at_the_byte_limit_quickly_in_bounded_memory(
    session: Store,
) -> None:
    csv_id = session.put_artifact(SID, gibibyte_of_csv(), name="expected.csv").id
    assert session.get_artifact(SID, csv_id).size == GiB
    document = session.put_artifact(SID, bol(), name="b.pdf").id
    task = session.submit_task(
        SID,
        "bol-reconcile",
        [csv_id, document],
        {"expected": csv_id, "key_column": "bol_number", "columns": ["weight_kg"]},
    )
    peak_rss_reset()
    before = current_rss()
    started = time.monotonic()
    assert Worker(session, name="test").run_one()
    elapsed = time.monotonic() - started
    growth = peak_rss() - before
    done = session.get_task(SID, task.id)
    assert_failed_leaving_nothing(
        session, done, "expected.csv: CSV is larger than the limit of 67108864 bytes"
    )
    assert elapsed < 10
    assert growth < 32 * MiB, f"peak memory grew by {growth / MiB:.1f} MiB"


def sixty_megabytes_of_commas() -> Iterator[bytes]:
    yield b"bol_number,weight_kg\nB-1,12\n"
    for _ in range(60):
        yield b"," * 1_000_000
    yield b"\n"


def test_one_line_of_sixty_million_commas_fails_fast_in_bounded_memory(session: Store) -> None:
    """Split, the line would be 60 million fields (some 460 MiB) before their count could be
    checked; it is refused as a row too long while it is read, and is not taken for blank."""
    csv_id = session.put_artifact(SID, sixty_megabytes_of_commas(), name="expected.csv").id
    document = session.put_artifact(SID, bol(), name="b.pdf").id
    task = session.submit_task(
        SID, "bol-reconcile", [csv_id, document], {"expected": csv_id, "key_column": "bol_number"}
    )
    peak_rss_reset()
    before = current_rss()
    started = time.monotonic()
    assert Worker(session, name="test").run_one()
    elapsed = time.monotonic() - started
    growth = peak_rss() - before
    done = session.get_task(SID, task.id)
    assert_failed_leaving_nothing(
        session, done, "expected.csv: line 3 starts a row longer than 1048576 characters"
    )
    assert elapsed < 2
    assert growth < 32 * MiB, f"peak memory grew by {growth / MiB:.1f} MiB"
