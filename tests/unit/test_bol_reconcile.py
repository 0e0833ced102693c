"""bol-reconcile: bills of lading against expected shipments report exactly what differs."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import pytest
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

from ephemera import InvalidInput
from ephemera.processors import Registry, TaskFailed
from ephemera.processors.documents.extract import PdfExtract, PdfExtractParams
from ephemera.processors.documents.limits import PdfLimits
from ephemera.processors.documents.reconcile import BolReconcile, BolReconcileParams
from ephemera.testing import MemoryTaskContext
from tests.bol import BOL_FIELDS, bol_pdf, form_bol_pdf

COLUMNS = [column for column, _ in BOL_FIELDS]


def shipment(number: int) -> dict[str, str]:
    return {
        "bol_number": f"B-{number}",
        "shipper": f"Shipper {number} Ltd",
        "consignee": f"Consignee {number} BV",
        "carrier": "Rhenus Freight",
        "weight_kg": f"{number % 7 * 100 + 40.5}",
        "pieces": str(number % 5 + 1),
    }


def csv_of(rows: list[dict[str, str]], delimiter: str = ",", bom: bool = False) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, delimiter=delimiter, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + text.getvalue().encode()


def run(
    inputs: dict[str, tuple[str, bytes]], params: dict[str, Any]
) -> tuple[MemoryTaskContext, dict[str, Any]]:
    ctx = MemoryTaskContext(inputs)
    model = Registry([BolReconcile()]).validate("bol-reconcile", params, ctx.inputs)
    assert isinstance(model, BolReconcileParams)
    return ctx, BolReconcile().run(ctx, model)


def planted() -> dict[str, tuple[str, bytes]]:
    """Eleven expected shipments B-1001..B-1011 and eleven documents, with planted
    differences: B-1003's weight differs, B-1004's consignee differs only in case and
    spacing, B-1006 does not print its pieces, B-1007 prints "Label value" lines without a
    colon, B-1010 is a filled form, B-9999 is not expected, B-1011 has no document."""
    expected = [shipment(n) for n in range(1001, 1012)]
    expected[3]["consignee"] = " Consignee   1004\tBV "  # as typed into a spreadsheet
    inputs = {"csv": ("expected.csv", csv_of(expected))}
    for row in expected[:9]:
        values = dict(row)
        number = int(row["bol_number"][2:])
        if number == 1003:
            values["weight_kg"] = "345.0"
        if number == 1004:
            values["consignee"] = "CONSIGNEE 1004 bv"
        if number == 1006:
            del values["pieces"]
        separator = "  " if number == 1007 else ": "
        inputs[f"d{number}"] = (f"bol-{number}.pdf", bol_pdf(values, separator=separator))
    inputs["d1010"] = ("bol-1010.pdf", form_bol_pdf(expected[9]))
    inputs["d9999"] = ("bol-9999.pdf", bol_pdf(shipment(9999)))
    return inputs


def not_matching(report: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(document, field, status) of everything the JSON report does not call a match."""
    found = set()
    for document in report["documents"]:
        if document["status"] != "matched":
            found.add((document["name"], "", document["status"]))
        for column, result in document["fields"].items():
            if result["status"] != "match":
                found.add((document["name"], column, result["status"]))
    for missing in report["missing_documents"]:
        found.add((missing["key"], "", "missing_document"))
    return found


def test_the_report_lists_exactly_the_planted_differences_in_json_and_csv() -> None:
    ctx, result = run(planted(), {"expected": "csv", "key_column": "bol_number"})
    report = json.loads(ctx.outputs["reconcile.json"])

    assert not_matching(report) == {
        ("bol-1003.pdf", "weight_kg", "mismatch"),
        ("bol-1006.pdf", "pieces", "missing"),
        ("bol-9999.pdf", "", "unexpected"),
        ("B-1011", "", "missing_document"),
    }
    by_name = {d["name"]: d for d in report["documents"]}
    assert by_name["bol-1003.pdf"]["fields"]["weight_kg"] == {
        "expected": "240.5",
        "found": "345.0",
        "status": "mismatch",
    }
    assert by_name["bol-1004.pdf"]["fields"]["consignee"]["status"] == "match"
    assert by_name["bol-1007.pdf"]["fields"]["carrier"]["found"] == "Rhenus Freight"
    assert by_name["bol-1010.pdf"]["fields"]["shipper"]["found"] == "Shipper 1010 Ltd"
    assert by_name["bol-1002.pdf"]["line"] == 3  # the header is line 1
    assert report["missing_documents"] == [{"key": "B-1011", "line": 12}]
    assert report["duplicate_keys"] == {"expected": [], "documents": []}
    assert report["expected"]["columns"] == COLUMNS[1:]

    lines = list(csv.DictReader(io.StringIO(ctx.outputs["reconcile.csv"].decode())))
    # One line per matched document and field, one per other document, one per missing one.
    assert len(lines) == 10 * 5 + 1 + 1
    from_csv = {
        (line["document"] or line["key"], line["field"], line["status"])
        for line in lines
        if line["status"] != "match"
    }
    assert from_csv == not_matching(report)
    assert result == {
        "reconciled": False,
        "documents": 11,
        "matched": 10,
        "unexpected": 1,
        "no_key": 0,
        "ambiguous": 0,
        "missing_documents": 1,
        "fields": {"match": 48, "mismatch": 1, "missing": 1},
        "outputs": ["reconcile.json", "reconcile.csv"],
    }
    assert ctx.progress_log == [(i, 12) for i in range(13)]


def test_documents_that_agree_with_every_row_reconcile() -> None:
    rows = [shipment(n) for n in (1, 2)]
    inputs = {"csv": ("expected.csv", csv_of(rows, delimiter=";", bom=True))}
    inputs |= {f"d{i}": (f"bol-{i}.pdf", bol_pdf(r)) for i, r in enumerate(rows)}
    _ctx, result = run(inputs, {"expected": "csv", "key_column": "bol_number"})
    assert result["reconciled"] is True
    assert result["fields"] == {"match": 10, "mismatch": 0, "missing": 0}


def test_an_extract_json_reconciles_like_its_pdf_and_labels_name_printed_fields() -> None:
    row = shipment(5)
    pdf = bol_pdf(row)
    extract_ctx = MemoryTaskContext({"p": ("bol-5.pdf", pdf)})
    PdfExtract().run(extract_ctx, PdfExtractParams())
    extracted = extract_ctx.outputs["bol-5.extract.json"]

    # Columns named otherwise than printed: the labels say how the document prints them.
    renamed = {"bol": row["bol_number"], "to": "CONSIGNEE 5 BV", "kg": "999"}
    expected = b"bol,to,kg\r\n" + ",".join(renamed.values()).encode() + b"\r\n"
    params = {
        "expected": "csv",
        "key_column": "bol",
        "labels": {"bol": "BOL Number", "to": "Consignee", "kg": "Weight kg"},
    }
    for document in [("bol-5.extract.json", extracted), ("bol-5.pdf", pdf)]:
        ctx, _result = run({"csv": ("expected.csv", expected), "d": document}, params)
        fields = json.loads(ctx.outputs["reconcile.json"])["documents"][0]["fields"]
        assert fields == {
            "to": {"expected": "CONSIGNEE 5 BV", "found": "Consignee 5 BV", "status": "match"},
            "kg": {"expected": "999", "found": row["weight_kg"], "status": "mismatch"},
        }


def test_duplicate_keys_are_reported_and_not_guessed() -> None:
    rows = [shipment(1), shipment(1) | {"carrier": "Other"}, shipment(2)]
    inputs = {
        "csv": ("expected.csv", csv_of(rows)),
        "a": ("a.pdf", bol_pdf(shipment(1))),
        "b": ("b.pdf", bol_pdf(shipment(2))),
        "c": ("c.pdf", bol_pdf(shipment(2))),
        "n": ("n.pdf", bol_pdf({"shipper": "nobody"})),
    }
    ctx, result = run(inputs, {"expected": "csv", "key_column": "bol_number"})
    report = json.loads(ctx.outputs["reconcile.json"])
    assert [d["status"] for d in report["documents"]] == [
        "ambiguous",
        "matched",
        "matched",
        "no_key",
    ]
    assert report["duplicate_keys"] == {
        "expected": [{"key": "b-1", "lines": [2, 3]}],
        "documents": [{"key": "b-2", "documents": ["b.pdf", "c.pdf"]}],
    }
    assert report["missing_documents"] == []
    assert result["reconciled"] is False


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"key_column": "bol"}, "expected.csv: has no key column 'bol'"),
        ({"key_column": "bol_number", "columns": ["weight"]}, "has no column 'weight'"),
        ({"key_column": "bol_number", "labels": {"kg": "Weight"}}, "has no column 'kg'"),
    ],
)
def test_columns_the_csv_lacks_fail_the_task_and_write_nothing(
    params: dict[str, Any], message: str
) -> None:
    inputs = {"csv": ("expected.csv", csv_of([shipment(1)])), "a": ("a.pdf", bol_pdf({}))}
    ctx = MemoryTaskContext(inputs)
    model = Registry([BolReconcile()]).validate(
        "bol-reconcile", {"expected": "csv"} | params, ctx.inputs
    )
    assert isinstance(model, BolReconcileParams)
    with pytest.raises(TaskFailed, match=message):
        BolReconcile().run(ctx, model)
    assert ctx.outputs == {}


@pytest.mark.parametrize(
    ("params", "count", "message"),
    [
        ({"expected": "nope", "key_column": "k"}, 2, "'nope' is not among the task's inputs"),
        ({"expected": "csv", "key_column": "k"}, 1, "at least one document"),
        ({"expected": "csv", "key_column": "k", "columns": ["k"]}, 2, "key column 'k'"),
        ({"expected": "csv", "key_column": "k", "delimiter": "\n"}, 2, "delimiter"),
        ({"expected": "csv", "key_column": "k", "tolerance": 1}, 2, "tolerance"),
    ],
)
def test_bad_params_are_refused_at_submission(
    params: dict[str, Any], count: int, message: str
) -> None:
    inputs = {"csv": ("expected.csv", b"k\n1\n"), "a": ("a.pdf", b"%PDF-")}
    ctx = MemoryTaskContext(dict(list(inputs.items())[:count]))
    with pytest.raises(InvalidInput, match=message):
        Registry([BolReconcile()]).validate("bol-reconcile", params, ctx.inputs)


def test_a_line_belongs_to_the_longest_label_that_starts_it() -> None:
    """ "Weight kg: 340" is the weight_kg field, not a weight of "kg: 340"."""
    expected = b"bol_number,weight,weight_kg\nB-1,2 t,340\n"
    text_pdf = bol_pdf({"bol_number": "B-1", "weight_kg": "340"})
    params = {"expected": "csv", "key_column": "bol_number", "labels": {"weight": "Weight"}}
    ctx, _ = run({"csv": ("expected.csv", expected), "d": ("b.pdf", text_pdf)}, params)
    fields = json.loads(ctx.outputs["reconcile.json"])["documents"][0]["fields"]
    assert fields["weight_kg"]["status"] == "match"
    assert fields["weight"] == {"expected": "2 t", "found": None, "status": "missing"}


def test_a_key_listed_twice_with_no_document_is_missing_and_not_reconciled() -> None:
    rows = [shipment(1), shipment(2), shipment(1)]
    inputs = {"csv": ("expected.csv", csv_of(rows)), "b": ("b.pdf", bol_pdf(shipment(2)))}
    ctx, result = run(inputs, {"expected": "csv", "key_column": "bol_number"})
    report = json.loads(ctx.outputs["reconcile.json"])
    assert report["missing_documents"] == [{"key": "B-1", "line": 2}]
    assert report["duplicate_keys"]["expected"] == [{"key": "b-1", "lines": [2, 4]}]
    assert (result["reconciled"], result["matched"], result["missing_documents"]) == (False, 1, 1)


def test_long_runs_of_spaces_in_a_line_cost_linear_time() -> None:
    """Megabyte lines of spaces around labels and values are read in well under a second (a
    backtracking pattern would take time squared in the length: hours)."""
    spaces = " " * 1_000_000
    text = "\n".join(
        [
            f"BOL Number{spaces}B-1",
            f"Weight{spaces}kg:{spaces}340{spaces}",
            f"Shipper: ACME{spaces}Ltd",  # found with its whitespace collapsed
            f"Carrier{spaces}",  # a label without a value
            f"{spaces}Pieces:   3",
            spaces,
        ]
    )
    extract = json.dumps({"pages": [{"text": text}], "fields": {}}).encode()
    expected = b"bol_number,weight_kg,shipper,carrier,pieces\nB-1,340,ACME Ltd,Rhenus,3\n"
    started = time.monotonic()
    ctx, _ = run(
        {"csv": ("expected.csv", expected), "d": ("b.extract.json", extract)},
        {"expected": "csv", "key_column": "bol_number"},
    )
    assert time.monotonic() - started < 1
    fields = json.loads(ctx.outputs["reconcile.json"])["documents"][0]["fields"]
    assert {c: (f["found"], f["status"]) for c, f in fields.items()} == {
        "weight_kg": ("340", "match"),
        "shipper": ("ACME Ltd", "match"),
        "carrier": (None, "missing"),
        "pieces": ("3", "match"),
    }


def pages_pdf(pages: list[list[str]]) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4)
    for lines in pages:
        for number, line in enumerate(lines):
            canvas.drawString(72, A4[1] - 100 - 20 * number, line)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def test_a_document_is_read_page_by_page_until_every_value_is_found() -> None:
    """Values on pages 1 and 2 of 10 are found, and pages 3 to 10 are not read: the limit
    of 5 pages, which reading them would exceed, does not fail the task."""
    document = pages_pdf(
        [["BOL Number: B-1"], ["Weight kg: 340"], *[["Weight kg: 999"]] * 8],
    )
    inputs = {
        "csv": ("expected.csv", b"bol_number,weight_kg\nB-1,340\n"),
        "d": ("b.pdf", document),
    }
    ctx = MemoryTaskContext(inputs)
    model = BolReconcileParams(expected="csv", key_column="bol_number")
    result = BolReconcile(pdf_limits=PdfLimits(max_pages=5)).run(ctx, model)
    assert result["reconciled"] is True, ctx.outputs["reconcile.json"]

    document = pages_pdf([["BOL Number: B-1"], *[["Pieces: 1"]] * 9])
    ctx = MemoryTaskContext({**inputs, "d": ("b.pdf", document)})
    with pytest.raises(TaskFailed, match=r"b\.pdf: has more than 5 pages"):
        BolReconcile(pdf_limits=PdfLimits(max_pages=5)).run(ctx, model)
    assert ctx.outputs == {}
