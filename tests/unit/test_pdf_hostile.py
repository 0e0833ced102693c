"""Hostile documents and CSVs for pdf-form-fill: a clear failure or a bounded run, never a hang.

Each failure leaves no output behind: not in the session, not in the blob store. The real
1 GiB CSV, with its peak memory measured, is in tests/acceptance/test_form_fill_csv_memory.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from ephemera import Settings, Store
from ephemera.models import Task, TaskState
from ephemera.processors import Registry
from ephemera.processors.documents.form_fill import PdfFormFill
from ephemera.processors.documents.limits import PdfLimits
from ephemera.processors.documents.tables import CsvLimits
from ephemera.worker import Worker
from tests.conftest import MakeSettings
from tests.documents import (
    bol_csv,
    broken_xref,
    encrypted,
    expected_fields,
    field_values,
    form_template,
    many_pages,
    shipments,
)

ROWS = shipments(4)


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(processors=["pdf-form-fill"], task_retry_delay_s=0)


@pytest.fixture(scope="module")
def template() -> bytes:
    return form_template()


def fill(
    store: Store, template: bytes, csv: bytes, processor: PdfFormFill | None = None, **params: Any
) -> Task:
    store.create_session("s1")
    tpl = store.put_artifact("s1", template, name="template.pdf")
    rows = store.put_artifact("s1", csv, name="rows.csv")
    task = store.submit_task(
        "s1", "pdf-form-fill", [tpl.id, rows.id], {"template": tpl.id, "rows": rows.id} | params
    )
    worker = Worker(store, processors=Registry([processor or PdfFormFill()]))
    assert worker.run_one()
    return store.get_task("s1", task.id)


def assert_failed_leaving_nothing(store: Store, task: Task, error: str) -> None:
    assert task.state is TaskState.FAILED
    assert task.error == error
    assert task.outputs == ()
    assert store.list_artifacts("s1", kind="output").items == []
    # Only the two inputs' bytes are stored.
    assert len(list(store.blobs.list("sessions/s1/"))) == 2


def test_an_encrypted_template_fails_the_task(store: Store, template: bytes) -> None:
    task = fill(store, encrypted(template), bol_csv(ROWS))
    assert_failed_leaving_nothing(
        store, task, "template.pdf: is encrypted; a password is not supported"
    )


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        (b"GIF89a not a pdf at all" * 100, "no %PDF header"),
        (b"%PDF-1.7\n" + b"\x00garbage\xff" * 500, ""),
    ],
)
def test_a_template_that_is_not_a_pdf_fails_the_task(
    store: Store, document: bytes, detail: str
) -> None:
    task = fill(store, document, bol_csv(ROWS))
    assert task.error is not None
    assert task.error.startswith(f"template.pdf: is not a readable PDF ({detail}")
    assert_failed_leaving_nothing(store, task, task.error)


def test_a_template_with_a_garbled_cross_reference_table_fails_the_task(
    store: Store, template: bytes
) -> None:
    task = fill(store, broken_xref(template), bol_csv(ROWS))
    assert task.error is not None
    assert task.error.startswith("template.pdf: is not a readable PDF (")
    assert_failed_leaving_nothing(store, task, task.error)


def test_a_template_whose_xref_offsets_are_wrong_is_recovered_and_filled(
    store: Store, template: bytes
) -> None:
    # Offsets off by a few bytes, as after a careless edit: the objects are all there, and
    # pypdf finds them by scanning. A bounded run, and a correct one.
    start = template.rindex(b"xref")
    shifted = template[:start].replace(b"endobj", b"endobj  ", 3) + template[start:]
    task = fill(store, shifted, bol_csv(ROWS))
    assert task.state is TaskState.SUCCEEDED, task.error
    first = next(o for o in task.outputs if o.name == "row-0001.pdf")
    assert field_values(store.read_artifact("s1", first.artifact_id)) == expected_fields(ROWS[0])


def test_a_ten_thousand_page_template_is_refused_before_its_pages_are_read(
    store: Store,
) -> None:
    document = many_pages(10_000)
    started = time.perf_counter()
    task = fill(store, document, bol_csv(ROWS))
    elapsed = time.perf_counter() - started
    assert_failed_leaving_nothing(
        store, task, "template.pdf: has 10000 pages, more than the limit of 2000"
    )
    assert elapsed < 5, elapsed


def test_a_template_larger_than_the_limit_is_refused_unread(store: Store, template: bytes) -> None:
    processor = PdfFormFill(pdf_limits=PdfLimits(max_bytes=len(template) - 1))
    task = fill(store, template, bol_csv(ROWS), processor)
    assert_failed_leaving_nothing(
        store,
        task,
        f"template.pdf: is {len(template)} bytes, more than the limit of {len(template) - 1}",
    )


def test_a_form_without_fields_fails_the_task(store: Store) -> None:
    task = fill(store, form_template(with_fields=False), bol_csv(ROWS))
    assert_failed_leaving_nothing(store, task, "template.pdf: has no form fields")


@pytest.mark.parametrize(
    ("csv", "delimiter"),
    [
        (bol_csv(ROWS, bom=True), ","),
        (bol_csv(ROWS, delimiter=";"), ";"),
        (bol_csv(ROWS, delimiter="\t"), "\t"),
    ],
    ids=["bom", "semicolon", "tab"],
)
def test_a_csv_with_a_bom_or_another_delimiter_fills_like_any_other(
    store: Store, template: bytes, csv: bytes, delimiter: str
) -> None:
    task = fill(store, template, csv)
    assert task.state is TaskState.SUCCEEDED, task.error
    outputs = {o.name: store.read_artifact("s1", o.artifact_id) for o in task.outputs}
    for index, row in enumerate(ROWS, start=1):
        assert field_values(outputs[f"row-{index:04d}.pdf"]) == expected_fields(row)
    assert b'"delimiter": "' + delimiter.encode("unicode_escape") in outputs["manifest.json"]


def test_a_given_delimiter_overrides_detection(store: Store, template: bytes) -> None:
    # Split on ";" the header is one column that matches nothing.
    task = fill(store, template, bol_csv(ROWS), delimiter=";")
    assert task.error is not None
    assert task.error.startswith("no column of the CSV ('BOL_NUMBER,shipper,")
    assert_failed_leaving_nothing(store, task, task.error)


def test_a_ragged_row_fails_the_task_before_any_pdf_is_written(
    store: Store, template: bytes
) -> None:
    csv = bol_csv(shipments(30)) + b"BOL-9,ACME,too few\r\n"
    task = fill(store, template, csv)
    assert_failed_leaving_nothing(store, task, "rows.csv: line 32 has 3 fields, the header has 7")
    # The first pass found it: no row was filled, so progress never started.
    assert task.progress_total is None


def test_a_csv_larger_than_the_limit_is_refused_unread(store: Store, template: bytes) -> None:
    csv = bol_csv(shipments(200))
    processor = PdfFormFill(csv_limits=CsvLimits(max_bytes=len(csv) - 1))
    task = fill(store, template, csv, processor)
    rid = task.inputs[1].artifact_id
    assert_failed_leaving_nothing(
        store,
        task,
        f"rows.csv ({rid}) is {len(csv)} bytes, more than the CSV limit of {len(csv) - 1}",
    )


def test_a_cell_longer_than_the_field_limit_fails_with_its_line(
    store: Store, template: bytes
) -> None:
    csv = b"shipper,weight_kg\nACME,1\n" + b"Big," + b"9" * 70_000 + b"\n"
    task = fill(store, template, csv)
    assert_failed_leaving_nothing(
        store, task, "rows.csv: line 3 has a field longer than 65536 characters"
    )


def test_a_template_past_the_template_cap_is_refused_unread(store: Store, template: bytes) -> None:
    """A template is held parsed for every row, so it has its own, lower cap."""
    processor = PdfFormFill(pdf_limits=PdfLimits(max_template_bytes=len(template) - 1))
    task = fill(store, template, bol_csv(ROWS), processor)
    assert_failed_leaving_nothing(
        store,
        task,
        f"template.pdf: is {len(template)} bytes, more than the limit of {len(template) - 1}",
    )
