"""bol-reconcile: bills of lading checked against the CSV of the shipments expected.

Each document's values come from its AcroForm fields when it is a filled form, and otherwise
(or for a column no field names) from its text, as "Label: value" or "Label value" lines.
Documents and CSV rows are matched by the key column; values are compared after trimming,
collapsing whitespace and folding case, nothing more (``340.5`` and ``340.50`` differ: a
reconciliation that guessed at number formats would hide the differences it exists to show).

Everything is read and checked before anything is written: a bad CSV or document fails the
task, naming it, and leaves no report behind. The CSV is streamed under its limits and kept
only as a dict of its rows; the documents are read one at a time and page by page, their text
alone, and a document's reading stops at the page where its last wanted value was found.

A shipment is missing when no document carries its key, even if the CSV lists the key twice;
a key listed twice is itself a difference, so the run is then not reconciled.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ephemera.errors import InvalidInput
from ephemera.models import Artifact
from ephemera.processors import TaskContext, TaskFailed
from ephemera.processors.documents.extraction import FieldValue, open_pdf
from ephemera.processors.documents.limits import CSV, PDF, PdfLimits
from ephemera.processors.documents.tables import CsvLimits, read_table

# An extract JSON is read whole; a bill of lading's is a few KiB, and one with every word's
# position of a long document is better reconciled from the PDF itself.
MAX_EXTRACT_JSON_BYTES = 16 * 1024 * 1024
MAX_LABEL_CHARS = 128

FieldStatus = Literal["match", "mismatch", "missing"]
REPORT_COLUMNS = (
    "document",
    "artifact_id",
    "key",
    "line",
    "document_status",
    "field",
    "expected",
    "found",
    "status",
)


class BolReconcileParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected: str = Field(
        min_length=1,
        description="artifact ID, among the task's inputs, of the CSV of expected shipments; "
        "every other input is a document (a PDF, or a pdf-extract .json output)",
    )
    key_column: str = Field(
        min_length=1,
        max_length=MAX_LABEL_CHARS,
        description="the CSV column that identifies a shipment, e.g. bol_number",
    )
    columns: list[str] | None = Field(
        None,
        min_length=1,
        max_length=CSV.max_columns,
        description="the CSV columns to compare (default: every column but the key)",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=CSV.max_columns,
        description="a column's label as printed in the documents (default: the column name, "
        "underscores read as spaces); matched without regard to case",
    )
    delimiter: str | None = Field(
        None,
        min_length=1,
        max_length=1,
        pattern=r'^[^\r\n"]$',
        description="the CSV's delimiter (default: detected among , ; tab |)",
    )


def normalise(value: str) -> str:
    return " ".join(value.split()).casefold()


_LEADING_WORD = re.compile(r"\w*")


def _label_pattern(label: str) -> re.Pattern[str]:
    # "Label: value", "Label - value" or "Label value" at the start of a line whose whitespace
    # runs were collapsed to single spaces: nothing here can backtrack over a long run of
    # spaces. The separator is atomic ("Label :" has an empty value, not the value ":").
    words = " ".join(re.escape(w) for w in label.split())
    return re.compile(rf"{words}(?> ?[:#=-] ?| )(?=\S)", re.IGNORECASE)


def _leading_word(text: str) -> str:
    # A line can only start with a label if it starts with the same run of word characters
    # (the label's first word runs up to a separator or a space): lines are indexed by it.
    match = _LEADING_WORD.match(text)
    return match.group().casefold() if match else ""


_Pattern = tuple[str, str, re.Pattern[str]]  # column, its label's leading word, its pattern


class _Finder:
    """Finds the values of the wanted columns in a document: form fields first, then text,
    read page by page until every column has a value."""

    def __init__(self, columns: Sequence[str], labels: Mapping[str, str]) -> None:
        self._labels = {c: labels.get(c) or c.replace("_", " ") for c in columns}
        self._names = {c: {_field_key(c), _field_key(self._labels[c])} for c in columns}
        # The longest label first: "Weight kg: 340" belongs to "Weight kg", not to "Weight".
        ordered = sorted(columns, key=lambda c: -len(self._labels[c]))
        self._patterns = [
            (c, _leading_word(self._labels[c].strip()), _label_pattern(self._labels[c]))
            for c in ordered
        ]

    def find(self, fields: Mapping[str, FieldValue], pages: Iterable[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        by_key = {_field_key(n): v for n, v in fields.items()}
        for column, names in self._names.items():
            for name in names:
                value = by_key.get(name)
                if isinstance(value, list):
                    value = ", ".join(value)
                if value and value.strip():
                    found[column] = value.strip()
                    break
        waiting = self._patterns  # labels that have not claimed a line yet
        texts = iter(pages)
        while waiting and len(found) < len(self._labels):
            text = next(texts, None)
            if text is None:
                break
            waiting = _claim(text, waiting, found)
        return found


def _claim(text: str, waiting: list[_Pattern], found: dict[str, str]) -> list[_Pattern]:
    """Each waiting label, longest first, claims the first line of ``text`` it starts that no
    longer label claimed; returns the labels still waiting."""
    lines: dict[str, list[str | None]] = {}
    for raw in text.splitlines():
        collapsed = " ".join(raw.split())
        if collapsed:
            lines.setdefault(_leading_word(collapsed), []).append(collapsed)
    still: list[_Pattern] = []
    for column, word, pattern in waiting:
        candidates = lines.get(word, [])
        for number, line in enumerate(candidates):
            match = pattern.match(line) if line is not None else None
            if line is not None and match:
                candidates[number] = None  # taken
                found.setdefault(column, line[match.end() :])
                break
        else:
            still.append((column, word, pattern))
    return still


def _field_key(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name).strip().casefold()


class BolReconcile:
    name = "bol-reconcile"
    description = (
        "Checks bills of lading (PDFs, or pdf-extract outputs) against a CSV of expected "
        "shipments, matched by a key column: per document and per field match, mismatch or "
        "missing (whitespace and case normalised), documents not expected, shipments without "
        "a document, duplicate keys. Writes reconcile.json and reconcile.csv."
    )
    params_model = BolReconcileParams

    def __init__(self, pdf_limits: PdfLimits = PDF, csv_limits: CsvLimits = CSV) -> None:
        self.pdf_limits = pdf_limits
        self.csv_limits = csv_limits

    def check_inputs(self, params: BolReconcileParams, inputs: Sequence[Artifact]) -> None:
        if params.expected not in {a.id for a in inputs}:
            raise InvalidInput(f"expected {params.expected!r} is not among the task's inputs")
        if len(inputs) < 2:
            raise InvalidInput("bol-reconcile needs at least one document besides the CSV")
        if params.columns is not None and params.key_column in params.columns:
            raise InvalidInput(f"columns: the key column {params.key_column!r} is not compared")

    def run(self, ctx: TaskContext, params: BolReconcileParams) -> dict[str, Any]:
        documents = [a for a in ctx.inputs if a.id != params.expected]
        total = len(documents) + 1
        ctx.progress(0, total)
        expected = ctx.input(params.expected)
        columns, rows, duplicates = self._expected(ctx, expected, params)
        ctx.progress(1, total)
        finder = _Finder([params.key_column, *columns], params.labels)

        reports: list[dict[str, Any]] = []
        seen: dict[str, list[str]] = {}
        for index, artifact in enumerate(documents, start=2):
            found = self._find(ctx, artifact, finder)
            report = _compare(artifact, found, params.key_column, columns, rows, duplicates)
            reports.append(report)
            if report["key"] is not None:
                seen.setdefault(normalise(report["key"]), []).append(artifact.name)
            ctx.progress(index, total)

        missing = [
            {"key": row[params.key_column], "line": line}
            for key, (line, row) in rows.items()
            if key not in seen
        ]
        report_json = {
            "expected": {
                "artifact_id": expected.id,
                "name": expected.name,
                "key_column": params.key_column,
                "columns": columns,
                "rows": len(rows),
            },
            "documents": reports,
            "missing_documents": missing,
            "duplicate_keys": {
                "expected": [{"key": k, "lines": lines} for k, lines in duplicates.items()],
                "documents": [
                    {"key": k, "documents": names} for k, names in seen.items() if len(names) > 1
                ],
            },
        }
        counts = _counts(report_json)
        json_out = ctx.write_output(
            "reconcile.json",
            json.dumps(report_json, ensure_ascii=False, indent=1).encode(),
            content_type="application/json",
        )
        csv_out = ctx.write_output(
            "reconcile.csv", _report_csv(report_json), content_type="text/csv"
        )
        return {**counts, "outputs": [json_out.name, csv_out.name]}

    def _expected(
        self, ctx: TaskContext, artifact: Artifact, params: BolReconcileParams
    ) -> tuple[list[str], dict[str, tuple[int, dict[str, str]]], dict[str, list[int]]]:
        """The columns to compare, the rows by normalised key, and keys given twice."""
        with ctx.open_input(artifact.id) as stream:
            table = read_table(stream, artifact.name, self.csv_limits, params.delimiter)
            key = params.key_column
            names = table.columns
            if key not in names:
                raise TaskFailed(
                    f"{artifact.name}: has no key column {key!r} (columns: {', '.join(names)})"
                )
            columns = params.columns or [c for c in names if c != key]
            unknown = [c for c in [*columns, *params.labels] if c not in names]
            if unknown:
                raise TaskFailed(
                    f"{artifact.name}: has no column {unknown[0]!r} (columns: {', '.join(names)})"
                )
            rows: dict[str, tuple[int, dict[str, str]]] = {}
            duplicates: dict[str, list[int]] = {}
            for line, row in table.rows:
                value = normalise(row[key])
                if not value:
                    raise TaskFailed(f"{artifact.name}: line {line} has no {key}")
                if value in rows:
                    duplicates.setdefault(value, [rows[value][0]]).append(line)
                    continue
                rows[value] = (line, {c: row[c] for c in [key, *columns]})
        return columns, rows, duplicates

    def _find(self, ctx: TaskContext, artifact: Artifact, finder: _Finder) -> dict[str, str]:
        ctx.check_cancelled()
        if artifact.name.lower().endswith(".json"):
            fields, texts = _from_extract_json(ctx, artifact)
            return finder.find(fields, texts)
        with open_pdf(ctx, artifact.id, self.pdf_limits) as pdf:
            pages = pdf.pages(self.pdf_limits.max_pages, words=False, tables=False)
            return finder.find(pdf.fields, (page.text for page in pages))


def _from_extract_json(
    ctx: TaskContext, artifact: Artifact
) -> tuple[dict[str, FieldValue], list[str]]:
    if artifact.size > MAX_EXTRACT_JSON_BYTES:
        raise TaskFailed(
            f"{artifact.name}: is more than {MAX_EXTRACT_JSON_BYTES} bytes; reconcile the PDF, "
            "or extract it with words=false"
        )
    with ctx.open_input(artifact.id) as stream:
        data = stream.read(MAX_EXTRACT_JSON_BYTES + 1)
    if len(data) > MAX_EXTRACT_JSON_BYTES:
        raise TaskFailed(f"{artifact.name}: is more than {MAX_EXTRACT_JSON_BYTES} bytes")
    try:
        value = json.loads(data)
        texts = [page["text"] for page in value["pages"]]
        fields = value.get("fields") or {}
        if not all(isinstance(t, str) for t in texts) or not isinstance(fields, dict):
            raise TypeError("text must be a string and fields an object")
    except (ValueError, TypeError, KeyError) as exc:
        raise TaskFailed(
            f"{artifact.name}: is not a pdf-extract output ({type(exc).__name__}: {exc})"
        ) from None
    return {str(k): _json_field(v) for k, v in fields.items()}, texts


def _json_field(value: Any) -> FieldValue:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value)


def _compare(
    artifact: Artifact,
    found: Mapping[str, str],
    key_column: str,
    columns: Sequence[str],
    rows: Mapping[str, tuple[int, dict[str, str]]],
    duplicates: Mapping[str, list[int]],
) -> dict[str, Any]:
    key = found.get(key_column)
    report: dict[str, Any] = {"artifact_id": artifact.id, "name": artifact.name, "key": key}
    if key is None:
        return report | {"status": "no_key", "line": None, "fields": {}}
    normalised = normalise(key)
    if normalised in duplicates:
        # Two expected rows for one key: comparing with either would be a guess.
        return report | {"status": "ambiguous", "line": None, "fields": {}}
    if normalised not in rows:
        return report | {"status": "unexpected", "line": None, "fields": {}}
    line, row = rows[normalised]
    fields: dict[str, dict[str, Any]] = {}
    for column in columns:
        want, got = row[column], found.get(column)
        status: FieldStatus
        if got is None:
            # Nothing expected and nothing printed agree.
            status = "match" if not want.strip() else "missing"
        else:
            status = "match" if normalise(got) == normalise(want) else "mismatch"
        fields[column] = {"expected": want, "found": got, "status": status}
    return report | {"status": "matched", "line": line, "fields": fields}


def _counts(report: Mapping[str, Any]) -> dict[str, Any]:
    documents: list[dict[str, Any]] = report["documents"]
    statuses = [d["status"] for d in documents]
    fields = [f["status"] for d in documents for f in d["fields"].values()]
    counts = {
        "documents": len(documents),
        "matched": statuses.count("matched"),
        "unexpected": statuses.count("unexpected"),
        "no_key": statuses.count("no_key"),
        "ambiguous": statuses.count("ambiguous"),
        "missing_documents": len(report["missing_documents"]),
        "fields": {s: fields.count(s) for s in ("match", "mismatch", "missing")},
    }
    clean = (
        counts["matched"] == len(documents)
        and not counts["missing_documents"]
        and fields.count("match") == len(fields)
        and not report["duplicate_keys"]["documents"]
        and not report["duplicate_keys"]["expected"]
    )
    return {"reconciled": clean, **counts}


def _report_lines(report: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for document in report["documents"]:
        base = {
            "document": document["name"],
            "artifact_id": document["artifact_id"],
            "key": document["key"] or "",
            "line": document["line"] or "",
            "document_status": document["status"],
        }
        if not document["fields"]:
            yield base | {"field": "", "expected": "", "found": "", "status": document["status"]}
        for column, result in document["fields"].items():
            found = result["found"]
            yield base | {
                "field": column,
                "expected": result["expected"],
                "found": "" if found is None else found,
                "status": result["status"],
            }
    for missing in report["missing_documents"]:
        yield dict.fromkeys(REPORT_COLUMNS, "") | {
            "key": missing["key"],
            "line": missing["line"],
            "document_status": "missing_document",
            "status": "missing_document",
        }


def _report_csv(report: Mapping[str, Any]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, REPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(_report_lines(report))
    return text.getvalue().encode()
