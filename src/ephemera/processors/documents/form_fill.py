"""pdf-form-fill: one filled PDF per row of a CSV, from an AcroForm template, and a manifest.

The CSV is read twice, as a stream each time. The first pass checks every row (ragged rows,
check-box values, output names, field lengths) and counts them, so a bad row fails the task
before a single PDF is written; the second fills. Nothing holds more than one row and one
PDF in memory, besides the manifest's entries (bounded by ``max_rows``).

The same template and row give the same bytes: the document ID derives from the template's
sha256 and the values filled, and nothing in the file records when it was made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pypdf import PdfReader

from ephemera.errors import InvalidInput
from ephemera.models import Artifact
from ephemera.processors import TaskContext, TaskFailed
from ephemera.processors.documents import acroform, limits
from ephemera.processors.documents.acroform import CHECKBOX, FILLABLE, OFF, RADIO, FormField
from ephemera.processors.documents.inputs import PdfInput, open_input, reason
from ephemera.processors.documents.tables import CsvLimits, Table, read_table

TRUE_WORDS = frozenset({"1", "x", "y", "yes", "true", "on", "checked"})
FALSE_WORDS = frozenset({"", "0", "n", "no", "false", "off", "unchecked"})
# Letters and digits of any script are kept: a shipper named Łódź keeps its name.
NAME_CHARS = re.compile(r"[^\w.-]+")
MAX_NAME_STEM = 100
# Between two checks of cancellation while rows are only being read.
CHECK_EVERY_ROWS = 1000


class PdfFormFillParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(
        min_length=1,
        description="artifact ID, among the task's inputs, of the AcroForm template PDF "
        "(may be reference data of another session)",
    )
    rows: str = Field(
        min_length=1,
        description="artifact ID, among the task's inputs, of the CSV (UTF-8, a header row)",
    )
    field_map: dict[str, str] | None = Field(
        None,
        max_length=512,
        description="{column: field name}; only these columns fill. Default: each column "
        "fills the field of the same name, else the one whose name matches ignoring case "
        "and spaces",
    )
    flatten: bool = Field(
        False, description="draw the values into the pages and remove the form fields"
    )
    name_column: str | None = Field(
        None,
        min_length=1,
        description="column whose value names each output (sanitised, .pdf added); "
        "default row-0001.pdf, row-0002.pdf, ...",
    )
    delimiter: str | None = Field(
        None,
        min_length=1,
        max_length=1,
        description="the CSV's delimiter; default: detected among , ; tab |",
    )
    max_rows: int = Field(
        1000,
        ge=1,
        le=limits.PDF.max_outputs,
        description="more data rows than this fail the task before any output is written",
    )

    @field_validator("delimiter")
    @classmethod
    def _usable_delimiter(cls, value: str | None) -> str | None:
        if value is not None and value in '"\r\n':
            raise ValueError("a quote or line break cannot be the delimiter")
        return value

    @field_validator("field_map")
    @classmethod
    def _one_column_per_field(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("field_map names no column; leave it out to match by name")
        seen: dict[str, str] = {}
        for column, field in value.items():
            if field in seen:
                raise ValueError(f"columns {seen[field]!r} and {column!r} both fill {field!r}")
            seen[field] = column
        return value


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """Which column fills which field, and what is left over on either side."""

    columns: dict[str, FormField]  # column -> field, in the CSV's column order
    columns_without_field: list[str]
    fields_without_column: list[str]
    unsupported_fields: list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class PlannedRow:
    index: int  # 1-based among the data rows
    line: int  # in the CSV file
    name: str
    text: dict[str, str]  # field -> value
    buttons: dict[str, str]  # field -> appearance state, or Off
    filled: list[str]  # the fields given a value (non-empty text, a button on)

    def document_id(self, template_sha256: str, flatten: bool) -> bytes:
        content = json.dumps(
            [template_sha256, flatten, sorted(self.text.items()), sorted(self.buttons.items())],
            ensure_ascii=False,
        )
        return hashlib.sha256(content.encode()).digest()[:16]


def match_columns(
    columns: Sequence[str],
    fields: Sequence[FormField],
    field_map: dict[str, str] | None,
    label: str,
) -> ColumnMap:
    by_name = {f.name: f for f in fields}
    fillable = {f.name: f for f in fields if f.kind in FILLABLE}
    chosen: dict[str, FormField] = {}
    if field_map is not None:
        for column, name in field_map.items():
            if column not in columns:
                raise TaskFailed(f"field_map names column {column!r}, which the CSV lacks")
            if name not in by_name:
                raise TaskFailed(f"field_map names field {name!r}, which {label} lacks")
            if name not in fillable:
                raise TaskFailed(
                    f"field {name!r} of {label} is a {by_name[name].kind} field; "
                    f"only {', '.join(FILLABLE)} fields are filled"
                )
            chosen[column] = fillable[name]
    else:
        for column in columns:  # exact names first, so they are never taken by a loose match
            if column in fillable:
                chosen[column] = fillable[column]
        taken = {f.name for f in chosen.values()}
        loose: dict[str, list[FormField]] = {}
        for field in fillable.values():
            if field.name not in taken:
                loose.setdefault(_loose(field.name), []).append(field)
        for column in columns:
            if column in chosen:
                continue
            candidates = loose.get(_loose(column), [])
            if len(candidates) > 1:
                names = ", ".join(repr(f.name) for f in candidates)
                raise TaskFailed(
                    f"column {column!r} matches several fields ({names}); use field_map"
                )
            if candidates:
                field = candidates[0]
                rival = next((c for c, f in chosen.items() if f is field), None)
                if rival is not None:
                    raise TaskFailed(
                        f"columns {rival!r} and {column!r} both match field {field.name!r}; "
                        "use field_map"
                    )
                chosen[column] = field
    if not chosen:
        raise TaskFailed(
            f"no column of the CSV ({_listed(columns)}) matches a field of {label} "
            f"({_listed([f.name for f in fillable.values()])}); name them alike or give field_map"
        )
    filled = {f.name for f in chosen.values()}
    return ColumnMap(
        columns={c: chosen[c] for c in columns if c in chosen},
        columns_without_field=[c for c in columns if c not in chosen],
        fields_without_column=[f.name for f in fields if f.name not in filled],
        unsupported_fields=[
            {"name": f.name, "kind": f.kind} for f in fields if f.kind not in FILLABLE
        ],
    )


def _loose(name: str) -> str:
    return "".join(name.split()).casefold()


def _listed(names: Sequence[str], most: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def output_name(value: str) -> str:
    """A file name from a cell: letters, digits, ``_.-`` kept, every other run becomes ``-``."""
    stem = (
        NAME_CHARS.sub("-", unicodedata.normalize("NFKC", value))
        .strip("-._")[:MAX_NAME_STEM]
        .strip("-._")
    )
    if stem.lower().endswith(".pdf"):
        stem = stem[:-4].rstrip("-._")
    return f"{stem}.pdf" if stem else ""


def plan_rows(
    table: Table, mapping: ColumnMap, name_column: str | None, label: str
) -> Iterator[PlannedRow]:
    """Each row as it will be filled; TaskFailed, with the line, for a row that cannot be."""
    names: dict[str, int] = {}
    for index, (line, values) in enumerate(table.rows, start=1):
        text: dict[str, str] = {}
        buttons: dict[str, str] = {}
        filled: list[str] = []
        for column, field in mapping.columns.items():
            value = values[column]
            where = f"{table.name}: line {line}, column {column!r}"
            if field.kind in (CHECKBOX, RADIO):
                state = _button_state(field, value, where)
                buttons[field.name] = state
                if state != OFF:
                    filled.append(field.name)
                continue
            if field.max_len is not None and len(value) > field.max_len:
                raise TaskFailed(
                    f"{where}: {len(value)} characters, but field {field.name!r} of {label} "
                    f"takes at most {field.max_len}"
                )
            text[field.name] = value
            if value:
                filled.append(field.name)
        if name_column is None:
            name = f"row-{index:04d}.pdf"
        else:
            name = output_name(values[name_column])
            if not name:
                raise TaskFailed(
                    f"{table.name}: line {line}: column {name_column!r} is "
                    f"{values[name_column]!r}, which leaves no file name"
                )
            if name in names:
                raise TaskFailed(
                    f"{table.name}: line {line}: column {name_column!r} names the output "
                    f"{name!r}, as line {names[name]} did"
                )
            names[name] = line
        yield PlannedRow(index, line, name, text, buttons, filled)


def _button_state(field: FormField, value: str, where: str) -> str:
    word = value.strip().casefold()
    for state in field.states:
        if word == state.casefold():
            return state
    if field.kind == CHECKBOX:
        if word in FALSE_WORDS:
            return OFF
        if word in TRUE_WORDS and len(field.states) == 1:
            return field.states[0]
    elif word == "":
        return OFF
    accepted = [*field.states] + (["yes/no"] if field.kind == CHECKBOX else ["empty"])
    raise TaskFailed(
        f"{where}: {value!r} is not a value of {field.kind} {field.name!r} "
        f"(accepted: {', '.join(accepted)})"
    )


class PdfFormFill:
    name = "pdf-form-fill"
    description = (
        "Fills an AcroForm template PDF once per row of a CSV: text fields (with appearance "
        "streams), check boxes and radio groups; optionally flattened. Writes one PDF per row "
        "and manifest.json (row, output, sha256, fields filled; columns without a field and "
        "fields without a column). The same template and row give byte-identical PDFs."
    )
    params_model = PdfFormFillParams

    def __init__(
        self, pdf_limits: limits.PdfLimits | None = None, csv_limits: CsvLimits | None = None
    ) -> None:
        self.pdf_limits = pdf_limits or limits.PDF
        self.csv_limits = csv_limits or limits.CSV

    def check_inputs(self, params: PdfFormFillParams, inputs: Sequence[Artifact]) -> None:
        ids = {artifact.id for artifact in inputs}
        for role in ("template", "rows"):
            artifact_id = getattr(params, role)
            if artifact_id not in ids:
                raise InvalidInput(f"{role} {artifact_id!r} is not among the task's inputs")
        if params.template == params.rows:
            raise InvalidInput("template and rows name the same artifact")

    def run(self, ctx: TaskContext, params: PdfFormFillParams) -> dict[str, Any]:
        # A form is small: its template is held parsed for every row, so it is capped lower.
        template_limits = dataclasses.replace(
            self.pdf_limits,
            max_bytes=min(self.pdf_limits.max_bytes, self.pdf_limits.max_template_bytes),
        )
        with open_input(ctx, params.template, template_limits) as template:
            return self._run(ctx, params, template)

    def _run(
        self, ctx: TaskContext, params: PdfFormFillParams, template: PdfInput
    ) -> dict[str, Any]:
        if template.locked:
            raise template.failed("is encrypted against editing; a template must not be")
        reader = template.pypdf()
        max_pages = self.pdf_limits.max_pages
        pages = template.page_count
        try:
            # The declared count refuses a huge tree unread; the tree itself may lie.
            if pages is None or pages <= max_pages:
                pages = len(reader.pages)
        except Exception as exc:
            raise template.failed(f"is not a readable PDF ({reason(exc)})") from None
        if pages > max_pages:
            raise template.failed(f"has {pages} pages, more than the limit of {max_pages}")
        fields = template.fields
        if not fields:
            raise template.failed("has no form fields")
        if not any(f.kind in FILLABLE for f in fields):
            kinds = ", ".join(sorted({f.kind for f in fields}))
            raise template.failed(f"has no text, checkbox or radio fields ({kinds})")

        rows = ctx.input(params.rows)
        csv_limits = dataclasses.replace(
            self.csv_limits, max_rows=min(params.max_rows, self.csv_limits.max_rows)
        )
        if rows.size > csv_limits.max_bytes:
            raise TaskFailed(
                f"{rows.name} ({rows.id}) is {rows.size} bytes, more than the CSV limit of "
                f"{csv_limits.max_bytes}"
            )
        with ctx.open_input(rows.id) as stream:
            table = read_table(stream, rows.name, csv_limits, params.delimiter)
            mapping = match_columns(table.columns, fields, params.field_map, template.label)
            if params.name_column is not None and params.name_column not in table.columns:
                raise TaskFailed(f"name_column {params.name_column!r} is not a column of the CSV")
            total = 0
            for row in plan_rows(table, mapping, params.name_column, template.label):
                total = row.index
                if total % CHECK_EVERY_ROWS == 0:
                    ctx.check_cancelled()
        if total == 0:
            raise TaskFailed(f"{rows.name}: CSV has a header but no rows")

        ctx.progress(0, total)
        outputs: list[dict[str, Any]] = []
        with ctx.open_input(rows.id) as stream:
            table = read_table(stream, rows.name, csv_limits, table.delimiter)
            for row in plan_rows(table, mapping, params.name_column, template.label):
                ctx.check_cancelled()
                outputs.append(self._fill(ctx, template, reader, row, params.flatten))
                ctx.progress(row.index, total)

        manifest = {
            "processor": self.name,
            "template": _described(template.artifact_id, template.name, template.sha256),
            "rows": _described(rows.id, rows.name, rows.sha256) | {"delimiter": table.delimiter},
            "flatten": params.flatten,
            "field_map": {column: field.name for column, field in mapping.columns.items()},
            "columns_without_field": mapping.columns_without_field,
            "fields_without_column": mapping.fields_without_column,
            "unsupported_fields": mapping.unsupported_fields,
            "outputs": outputs,
        }
        written = ctx.write_output(
            "manifest.json",
            json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n",
            kind="output",
            content_type="application/json",
        )
        return {
            "rows": total,
            "outputs": len(outputs),
            "manifest": written.id,
            "flatten": params.flatten,
            "fields_filled": len(mapping.columns),
            "columns_without_field": len(mapping.columns_without_field),
            "fields_without_column": len(mapping.fields_without_column),
        }

    @staticmethod
    def _fill(
        ctx: TaskContext, template: PdfInput, reader: PdfReader, row: PlannedRow, flatten: bool
    ) -> dict[str, Any]:
        try:
            data = acroform.fill(
                reader,
                row.text,
                row.buttons,
                flatten=flatten,
                document_id=row.document_id(template.sha256, flatten),
            )
        except Exception as exc:
            raise template.failed(
                f"filling the row at line {row.line} failed ({type(exc).__name__}: {exc})"
            ) from None
        artifact = ctx.write_output(row.name, data, kind="output", content_type="application/pdf")
        return {
            "row": row.index,
            "line": row.line,
            "artifact_id": artifact.id,
            "name": artifact.name,
            "sha256": artifact.sha256,
            "size": artifact.size,
            "fields_filled": row.filled,
        }


def _described(artifact_id: str, name: str, sha256: str) -> dict[str, str]:
    return {"artifact_id": artifact_id, "name": name, "sha256": sha256}
