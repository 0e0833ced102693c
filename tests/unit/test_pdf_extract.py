"""pdf-extract: text, words and tables recovered from generated PDFs, one JSON per PDF."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from ephemera import InvalidInput
from ephemera.processors import Registry
from ephemera.processors.documents.extract import PdfExtract, PdfExtractParams
from ephemera.testing import MemoryTaskContext
from tests.bol import CELL_HEIGHT, CELL_WIDTH, PAGE_HEIGHT, TABLE_ORIGIN, form_bol_pdf, table_pdf

TABLE = [
    ["Item", "Qty", "Weight kg"],
    ["Pallet A", "2", "340.5"],
    ["Crate B", "1", "120"],
    ["Drum C", "4", "88.25"],
]
TITLE = "Shipment summary"
PARAGRAPH = "Three consignments to Rotterdam, loaded at dock 7."


def run(
    inputs: dict[str, tuple[str, bytes]], params: dict[str, Any] | None = None
) -> tuple[MemoryTaskContext, dict[str, Any]]:
    ctx = MemoryTaskContext(inputs)
    model = Registry([PdfExtract()]).validate("pdf-extract", params or {}, ctx.inputs)
    assert isinstance(model, PdfExtractParams)
    return ctx, PdfExtract().run(ctx, model)


@pytest.fixture(scope="module")
def manifest() -> bytes:
    return table_pdf(TITLE, PARAGRAPH, TABLE)


def test_the_text_and_the_table_are_recovered_cell_for_cell(manifest: bytes) -> None:
    ctx, result = run({"m": ("manifest.pdf", manifest)})

    extracted = json.loads(ctx.outputs["manifest.extract.json"])
    first, second = extracted["pages"]
    assert first["text"].splitlines()[:2] == [TITLE, PARAGRAPH]
    assert first["tables"] == [TABLE]
    assert second["text"] == PARAGRAPH
    assert second["tables"] == []
    assert [p["number"] for p in extracted["pages"]] == [1, 2]
    assert (first["width"], first["height"]) == (595.28, 841.89)  # A4 in points
    assert extracted["source"] == {
        "artifact_id": "m",
        "name": "manifest.pdf",
        "sha256": ctx.inputs[0].sha256,
    }
    assert extracted["fields"] == {}
    assert extracted["truncated"] is False
    assert extracted["page_count"] == 2

    rows = list(csv.reader(io.StringIO(ctx.outputs["manifest.p1.t1.csv"].decode())))
    assert rows == TABLE
    assert ctx.output_artifacts["manifest.p1.t1.csv"].content_type == "text/csv"
    assert result == {
        "documents": [
            {
                "artifact_id": "m",
                "name": "manifest.pdf",
                "pages": 2,
                "truncated": False,
                "fields": 0,
                "output": "manifest.extract.json",
                "tables": ["manifest.p1.t1.csv"],
            }
        ],
        "pages": 2,
        "tables": 1,
    }


def test_words_lie_where_they_were_drawn(manifest: bytes) -> None:
    ctx, _ = run({"m": ("manifest.pdf", manifest)})
    words = json.loads(ctx.outputs["manifest.extract.json"])["pages"][0]["words"]
    by_text = {w["text"]: w for w in words}
    assert set(by_text["Pallet"]) == {"text", "x0", "x1", "top", "bottom"}

    # The cell "Pallet A" was drawn at 6 pt into row 2 of the table, column 1, its baseline
    # 8 pt above the cell's bottom edge; "top" counts from the top of the page.
    left, table_top = TABLE_ORIGIN
    pallet = by_text["Pallet"]
    assert pallet["x0"] == pytest.approx(left + 6, abs=0.01)
    baseline_from_top = PAGE_HEIGHT - (table_top - 2 * CELL_HEIGHT + 8)
    assert pallet["top"] < baseline_from_top < pallet["bottom"] + 3
    assert 0 < pallet["bottom"] - pallet["top"] < 14  # an 11 pt font
    qty = by_text["Qty"]
    assert qty["x0"] == pytest.approx(left + CELL_WIDTH + 6, abs=0.01)
    assert qty["x0"] < qty["x1"] < left + 2 * CELL_WIDTH
    # Rounded to 1/100 pt.
    assert all(round(w["x1"], 2) == w["x1"] for w in words)
    title_words = [w["text"] for w in words if w["top"] < 80]
    assert title_words == TITLE.split()


def test_one_json_per_pdf_one_csv_per_table_and_progress_by_page_across_inputs(
    manifest: bytes,
) -> None:
    other = table_pdf("Second", "Another text.", [["a", "b"], ["1", "2"]])
    ctx, result = run({"m": ("manifest.pdf", manifest), "o": ("other.PDF", other)})
    assert sorted(ctx.outputs) == [
        "manifest.extract.json",
        "manifest.p1.t1.csv",
        "other.extract.json",
        "other.p1.t1.csv",
    ]
    assert ctx.progress_log == [(i, 4) for i in range(5)]
    assert result["pages"] == 4
    assert result["tables"] == 2
    assert json.loads(ctx.outputs["other.extract.json"])["pages"][0]["tables"] == [
        [["a", "b"], ["1", "2"]]
    ]


def test_without_words_and_tables_the_json_holds_the_text_alone(manifest: bytes) -> None:
    ctx, result = run({"m": ("manifest.pdf", manifest)}, {"words": False, "tables": False})
    page = json.loads(ctx.outputs["manifest.extract.json"])["pages"][0]
    assert set(page) == {"number", "width", "height", "text"}
    assert list(ctx.outputs) == ["manifest.extract.json"]
    assert result["tables"] == 0


def test_pages_reads_a_prefix_and_says_the_document_was_truncated(manifest: bytes) -> None:
    ctx, result = run({"m": ("manifest.pdf", manifest)}, {"pages": 1})
    extracted = json.loads(ctx.outputs["manifest.extract.json"])
    assert [p["number"] for p in extracted["pages"]] == [1]
    assert extracted["truncated"] is True
    assert result["documents"][0]["truncated"] is True
    assert ctx.progress_log == [(0, 1), (1, 1)]

    ctx, result = run({"m": ("manifest.pdf", manifest)}, {"pages": 2})
    assert json.loads(ctx.outputs["manifest.extract.json"])["truncated"] is False


def test_a_filled_form_gives_its_field_values() -> None:
    pdf = form_bol_pdf({"bol_number": "BOL-7", "consignee": "Nordhafen GmbH"})
    ctx, result = run({"f": ("form.pdf", pdf)})
    fields = json.loads(ctx.outputs["form.extract.json"])["fields"]
    assert fields["bol_number"] == "BOL-7"
    assert fields["consignee"] == "Nordhafen GmbH"
    assert fields["carrier"] == ""
    assert result["documents"][0]["fields"] == 6


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"pages": 0}, "pages"),
        ({"pages": 2001}, "pages"),
        ({"words": True, "ocr": True}, "ocr"),
    ],
)
def test_bad_params_are_refused_at_submission(params: dict[str, Any], problem: str) -> None:
    ctx = MemoryTaskContext({"m": ("m.pdf", b"%PDF-")})
    with pytest.raises(InvalidInput, match=problem):
        Registry([PdfExtract()]).validate("pdf-extract", params, ctx.inputs)


def test_inputs_whose_outputs_would_share_a_name_are_refused_at_submission() -> None:
    ctx = MemoryTaskContext({"a": ("bol.pdf", b""), "b": ("bol.PDF", b"")})
    with pytest.raises(InvalidInput, match=r"would both write bol\.extract\.json"):
        Registry([PdfExtract()]).validate("pdf-extract", {}, ctx.inputs)
    with pytest.raises(InvalidInput, match="at least one PDF"):
        Registry([PdfExtract()]).validate("pdf-extract", {}, [])
