"""pdf-form-fill: a filled PDF per CSV row, read back equal to the row, reproducible to the byte."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pdfplumber
import pytest
from pypdf import PdfReader
from pypdf.generic import ArrayObject, DictionaryObject

from ephemera import InvalidInput, Settings, Store
from ephemera.models import Task, TaskState
from ephemera.processors import Registry, TaskCancelled
from ephemera.processors.documents.form_fill import PdfFormFill, PdfFormFillParams, output_name
from ephemera.testing import MemoryTaskContext
from ephemera.worker import Worker
from tests.conftest import MakeSettings
from tests.documents import (
    RADIO_STATES,
    bol_csv,
    expected_fields,
    field_values,
    form_template,
    shipments,
)

ROWS = shipments(50)


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(processors=["pdf-form-fill"], task_retry_delay_s=0)


@pytest.fixture(scope="module")
def template() -> bytes:
    return form_template()


def run_task(store: Store, session: str, inputs: list[Any], params: dict[str, Any]) -> Task:
    task = store.submit_task(session, "pdf-form-fill", inputs, params)
    assert Worker(store, name="test-worker").run_one()
    return store.get_task(session, task.id)


def fill(
    store: Store, template: bytes, csv: bytes, session: str = "s1", **params: Any
) -> tuple[Task, dict[str, bytes]]:
    """Run pdf-form-fill on a fresh session; the task and its outputs' bytes by name."""
    store.create_session(session)
    tpl = store.put_artifact(session, template, name="bol-template.pdf", kind="template")
    rows = store.put_artifact(session, csv, name="shipments.csv")
    done = run_task(
        store, session, [tpl.id, rows.id], {"template": tpl.id, "rows": rows.id} | params
    )
    outputs = {o.name: store.read_artifact(session, o.artifact_id) for o in done.outputs}
    return done, outputs


def catalog(pdf: bytes) -> DictionaryObject:
    root = PdfReader(io.BytesIO(pdf)).trailer["/Root"].get_object()
    assert isinstance(root, DictionaryObject)
    return root


def document_id(pdf: bytes) -> bytes:
    ids = PdfReader(io.BytesIO(pdf)).trailer["/ID"]
    assert isinstance(ids, ArrayObject)
    return bytes(ids[0].original_bytes)


def manifest_of(outputs: dict[str, bytes]) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(outputs["manifest.json"])
    return manifest


def test_fifty_rows_give_fifty_pdfs_whose_fields_read_back_as_the_rows_and_a_manifest(
    store: Store, template: bytes
) -> None:
    done, outputs = fill(store, template, bol_csv(ROWS))

    assert done.state is TaskState.SUCCEEDED, done.error
    names = [f"row-{i:04d}.pdf" for i in range(1, 51)]
    assert sorted(outputs) == sorted([*names, "manifest.json"])
    for name, row in zip(names, ROWS, strict=True):
        assert field_values(outputs[name]) == expected_fields(row), name
        # The values have appearance streams: viewers need not regenerate them.
        form = catalog(outputs[name])["/AcroForm"].get_object()
        assert isinstance(form, DictionaryObject)
        assert form.get("/NeedAppearances") in (None, False)

    manifest = manifest_of(outputs)
    by_name = {o.name: o for o in done.outputs}
    assert done.result == {
        "rows": 50,
        "outputs": 50,
        "manifest": by_name["manifest.json"].artifact_id,
        "flatten": False,
        "fields_filled": 6,
        "columns_without_field": 1,
        "fields_without_column": 1,
    }
    assert (
        manifest["template"]["sha256"]
        == store.get_artifact("s1", done.inputs[0].artifact_id).sha256
    )
    assert manifest["rows"]["name"] == "shipments.csv"
    assert manifest["rows"]["delimiter"] == ","
    # Exact names first, then ignoring case and spaces.
    assert manifest["field_map"] == {
        "BOL_NUMBER": "bol_number",
        "shipper": "shipper",
        "consignee name": "Consignee Name",
        "weight_kg": "weight_kg",
        "hazmat": "hazmat",
        "mode": "mode",
    }
    assert manifest["columns_without_field"] == ["notes"]
    assert manifest["fields_without_column"] == ["carrier"]
    for index, (entry, row) in enumerate(zip(manifest["outputs"], ROWS, strict=True), start=1):
        stored = store.get_artifact("s1", entry["artifact_id"])
        # The sha256 the manifest records is the one the store serves as the ETag.
        assert entry["sha256"] == stored.sha256 == by_name[entry["name"]].sha256
        assert stored.content_type == "application/pdf"
        assert stored.kind == "output"
        assert (entry["row"], entry["line"], entry["name"]) == (index, index + 1, names[index - 1])
        filled = {k for k, v in expected_fields(row).items() if v not in ("", "/Off")}
        assert sorted(entry["fields_filled"]) == sorted(filled)


def test_the_template_may_be_reference_data_of_another_session(
    store: Store, template: bytes
) -> None:
    library = store.create_session("library")
    tpl = store.put_artifact("library", template, name="bol-template.pdf", kind="template")
    store.create_session("s1")
    rows = store.put_artifact("s1", bol_csv(ROWS[:3]), name="shipments.csv")
    task = store.submit_task(
        "s1",
        "pdf-form-fill",
        [("library", tpl.id), rows.id],
        {"template": tpl.id, "rows": rows.id},
        credentials={"library": library.token},
    )
    assert Worker(store).run_one()
    done = store.get_task("s1", task.id)
    assert done.state is TaskState.SUCCEEDED, done.error
    assert len(done.outputs) == 4
    assert store.list_artifacts("library").items == [tpl]


def test_flattened_outputs_have_no_fields_and_their_page_text_shows_the_values(
    store: Store, template: bytes
) -> None:
    done, outputs = fill(store, template, bol_csv(ROWS[:12]), flatten=True)

    assert done.state is TaskState.SUCCEEDED, done.error
    for index, row in enumerate(ROWS[:12], start=1):
        pdf = outputs[f"row-{index:04d}.pdf"]
        reader = PdfReader(io.BytesIO(pdf))
        assert reader.get_fields() is None
        assert "/AcroForm" not in catalog(pdf)
        assert all("/Annots" not in page for page in reader.pages)
        with pdfplumber.open(io.BytesIO(pdf)) as document:
            text = document.pages[0].extract_text()
        for value in (row.bol_number, row.shipper, row.consignee, row.weight_kg):
            assert value in text
    assert manifest_of(outputs)["flatten"] is True


def test_a_second_task_on_the_same_template_and_rows_gives_byte_identical_pdfs(
    store: Store, template: bytes
) -> None:
    for flatten in (False, True):
        csv = bol_csv(ROWS[:20])
        _, first = fill(store, template, csv, session=f"first-{flatten}", flatten=flatten)
        _, second = fill(store, template, csv, session=f"second-{flatten}", flatten=flatten)
        pdfs = sorted(name for name in first if name.endswith(".pdf"))
        assert len(pdfs) == 20
        for name in pdfs:
            assert first[name] == second[name], name
        # The document ID is the row's, not a constant: two rows differ in it.
        ids = {document_id(first[name]) for name in pdfs}
        assert len(ids) == 20
        # No clock either: the dates and producer are the template's own.
        template_info = PdfReader(io.BytesIO(template)).metadata
        assert PdfReader(io.BytesIO(first[pdfs[0]])).metadata == template_info


def test_the_name_column_names_each_output_sanitised(store: Store, template: bytes) -> None:
    done, outputs = fill(store, template, bol_csv(ROWS[:3]), name_column="shipper")

    assert done.state is TaskState.SUCCEEDED, done.error
    assert set(outputs) == {
        "ACME-Freight-Ltd.pdf",
        "Müller-Söhne-GmbH.pdf",
        "Łódź-Logistics.pdf",
        "manifest.json",
    }
    assert output_name("../../etc/passwd") == "etc-passwd.pdf"
    assert output_name("a\x00b\u202ec") == "a-b-c.pdf"
    assert output_name("Invoice 7.PDF") == "Invoice-7.pdf"
    assert output_name("  ///  ") == ""


def test_two_rows_naming_the_same_output_fail_the_task_before_any_output(
    store: Store, template: bytes
) -> None:
    rows = [ROWS[0], ROWS[4]]  # the same shipper
    done, outputs = fill(store, template, bol_csv(rows), name_column="shipper")

    assert done.state is TaskState.FAILED
    assert done.error == (
        "shipments.csv: line 3: column 'shipper' names the output 'ACME-Freight-Ltd.pdf', "
        "as line 2 did"
    )
    assert outputs == {}
    assert store.list_artifacts("s1", kind="output").items == []


def test_a_field_map_fills_only_the_columns_it_names(store: Store, template: bytes) -> None:
    field_map = {"shipper": "carrier", "BOL_NUMBER": "bol_number"}
    done, outputs = fill(store, template, bol_csv(ROWS[:2]), field_map=field_map)

    assert done.state is TaskState.SUCCEEDED, done.error
    values = field_values(outputs["row-0001.pdf"])
    assert values["carrier"] == ROWS[0].shipper
    assert values["bol_number"] == ROWS[0].bol_number
    assert values["shipper"] == ""
    manifest = manifest_of(outputs)
    assert manifest["field_map"] == {"BOL_NUMBER": "bol_number", "shipper": "carrier"}
    assert manifest["columns_without_field"] == [
        "consignee name",
        "weight_kg",
        "hazmat",
        "mode",
        "notes",
    ]
    assert manifest["fields_without_column"] == [
        "shipper",
        "Consignee Name",
        "weight_kg",
        "hazmat",
        "mode",
    ]


@pytest.mark.parametrize(
    ("params", "csv", "error"),
    [
        (
            {"field_map": {"shipper": "no_such_field"}},
            None,
            "field_map names field 'no_such_field', which bol-template.pdf",
        ),
        (
            {"field_map": {"missing": "shipper"}},
            None,
            "field_map names column 'missing', which the CSV lacks",
        ),
        ({"name_column": "nope"}, None, "name_column 'nope' is not a column of the CSV"),
        (
            {},
            b"colour,size\nred,3\n",
            "no column of the CSV ('colour', 'size') matches a field of bol-template.pdf",
        ),
        (
            {},
            b"shipper,hazmat\nACME,maybe\n",
            "shipments.csv: line 2, column 'hazmat': 'maybe' is not a value of checkbox "
            "'hazmat' (accepted: Yes, yes/no)",
        ),
        (
            {},
            b"shipper,mode\nACME,air\n",
            "shipments.csv: line 2, column 'mode': 'air' is not a value of radio 'mode' "
            f"(accepted: {', '.join(RADIO_STATES)}, empty)",
        ),
        ({}, b"shipper,mode\n", "shipments.csv: CSV has a header but no rows"),
    ],
)
def test_rows_or_params_that_cannot_fill_the_form_fail_the_task_and_leave_nothing(
    store: Store, template: bytes, params: dict[str, Any], csv: bytes | None, error: str
) -> None:
    done, outputs = fill(store, template, csv or bol_csv(ROWS[:2]), **params)

    assert done.state is TaskState.FAILED
    assert done.error is not None
    assert done.error.startswith(error), done.error
    assert outputs == {}
    assert store.list_artifacts("s1", kind="output").items == []


def test_params_are_checked_at_submission(store: Store, template: bytes) -> None:
    store.create_session("s1")
    tpl = store.put_artifact("s1", template, name="t.pdf")
    rows = store.put_artifact("s1", b"shipper\nACME\n", name="r.csv")
    cases: list[tuple[list[str], dict[str, Any], str]] = [
        ([rows.id], {"template": tpl.id, "rows": rows.id}, "template .* is not among the task"),
        ([tpl.id], {"template": tpl.id, "rows": rows.id}, "rows .* is not among the task"),
        ([tpl.id], {"template": tpl.id, "rows": tpl.id}, "name the same artifact"),
        ([tpl.id, rows.id], {"template": tpl.id, "rows": rows.id, "pages": 3}, "pages"),
        ([tpl.id, rows.id], {"template": tpl.id, "rows": rows.id, "max_rows": 10_001}, "max_rows"),
        ([tpl.id, rows.id], {"template": tpl.id, "rows": rows.id, "delimiter": '"'}, "delimiter"),
        (
            [tpl.id, rows.id],
            {"template": tpl.id, "rows": rows.id, "field_map": {"a": "x", "b": "x"}},
            "both fill 'x'",
        ),
    ]
    for inputs, params, message in cases:
        with pytest.raises(InvalidInput, match=message):
            store.submit_task("s1", "pdf-form-fill", inputs, params)
    assert store.list_tasks("s1").items == []


class CancelledAfter(MemoryTaskContext):
    """A context whose task is cancelled once ``rows`` rows were reported done."""

    def __init__(self, rows: int, inputs: dict[str, tuple[str, bytes]]) -> None:
        super().__init__(inputs)
        self._rows = rows

    def progress(self, done: int, total: int) -> None:
        if done >= self._rows:
            self.cancelled = True
        super().progress(done, total)


def test_cancellation_is_seen_after_each_row_and_progress_counts_rows(template: bytes) -> None:
    inputs = {"t": ("t.pdf", template), "r": ("r.csv", bol_csv(ROWS[:10]))}
    params = Registry([PdfFormFill()]).validate(
        "pdf-form-fill", {"template": "t", "rows": "r"}, MemoryTaskContext(inputs).inputs
    )
    assert isinstance(params, PdfFormFillParams)
    ctx = CancelledAfter(3, inputs)
    with pytest.raises(TaskCancelled):
        PdfFormFill().run(ctx, params)
    assert ctx.progress_log == [(0, 10), (1, 10), (2, 10), (3, 10)]
    assert sorted(ctx.outputs) == ["row-0001.pdf", "row-0002.pdf", "row-0003.pdf"]


def rows_csv(count: int) -> Iterator[bytes]:
    yield b"shipper\n"
    for i in range(count):
        yield f"s{i}\n".encode()


def test_more_rows_than_max_rows_fail_before_any_output(store: Store, template: bytes) -> None:
    done, outputs = fill(store, template, b"".join(rows_csv(6)), max_rows=5)

    assert done.state is TaskState.FAILED
    assert done.error == "shipments.csv: CSV has more than 5 rows"
    assert outputs == {}
