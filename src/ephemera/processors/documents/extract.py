"""pdf-extract: text, words with positions, tables and form fields out of PDFs, per page.

Every input is opened and checked before any page is read, so a batch with one encrypted,
broken or oversized PDF fails at once, naming it, rather than after hours of extraction: a
batch extracted in part would mislead whatever reads it next (bol-reconcile would report the
missing documents as missing shipments). A document with more pages than the ceiling fails
too, unless ``pages`` asks for a prefix, in which case the output says it is ``truncated``:
reading only part of a document is something the caller chooses, never a silent default.

Each document's JSON is written as a stream while its pages are read, one page in memory at a
time; each table found also becomes a CSV as its page is read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ephemera.errors import InvalidInput
from ephemera.models import Artifact
from ephemera.processors import TaskContext, TaskFailed
from ephemera.processors.documents.extraction import PageContent, PdfDocument, Table, open_pdf
from ephemera.processors.documents.limits import PDF, PdfLimits


class PdfExtractParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    words: bool = Field(
        True, description="list each page's words with their positions (x0, x1, top, bottom)"
    )
    tables: bool = Field(
        True, description="detect each page's ruled tables: in the JSON, and one CSV per table"
    )
    pages: int | None = Field(
        None,
        ge=1,
        le=PDF.max_pages,
        description=(
            "read at most this many pages of each PDF, marking longer ones truncated; "
            f"without it, a PDF of more than {PDF.max_pages} pages fails the task"
        ),
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    artifact: Artifact
    stem: str
    pages: int  # to read, as far as the page tree tells: for progress
    limit: int  # pages read at most, whatever the page tree tells
    prefix: bool  # the caller asked for the first pages only: more are not a failure


def stem_of(name: str) -> str:
    path = PurePosixPath(name)
    return path.stem if path.suffix.lower() == ".pdf" else path.name


class PdfExtract:
    name = "pdf-extract"
    description = (
        "Reads PDFs page by page: text, words with positions, ruled tables and AcroForm field "
        "values. One <stem>.extract.json per PDF, written as a stream, and one "
        "<stem>.p<page>.t<n>.csv per table; progress by page. Encrypted, malformed or "
        "oversized PDFs fail the task, naming the document."
    )
    params_model = PdfExtractParams

    def __init__(self, limits: PdfLimits = PDF) -> None:
        self.limits = limits

    def check_inputs(self, params: PdfExtractParams, inputs: Sequence[Artifact]) -> None:
        if not inputs:
            raise InvalidInput("pdf-extract needs at least one PDF input")
        seen: dict[str, str] = {}
        for artifact in inputs:
            stem = stem_of(artifact.name)
            if stem in seen:
                raise InvalidInput(
                    f"inputs {seen[stem]!r} and {artifact.name!r} would both write "
                    f"{stem}.extract.json; rename one"
                )
            seen[stem] = artifact.name

    def run(self, ctx: TaskContext, params: PdfExtractParams) -> dict[str, Any]:
        plans = [self._plan(ctx, artifact, params) for artifact in ctx.inputs]
        state = _RunState(ctx, self.limits, sum(plan.pages for plan in plans))
        documents = [self._extract(state, plan, params) for plan in plans]
        state.finish()
        return {
            "documents": documents,
            "pages": sum(d["pages"] for d in documents),
            "tables": sum(len(d["tables"]) for d in documents),
        }

    def _plan(self, ctx: TaskContext, artifact: Artifact, params: PdfExtractParams) -> _Plan:
        ctx.check_cancelled()
        ceiling = self.limits.max_pages
        with open_pdf(ctx, artifact.id, self.limits) as document:
            count = document.page_count
        if params.pages is None and count is not None and count > ceiling:
            raise TaskFailed(
                f"{artifact.name}: has {count} pages, more than the limit of {ceiling}; "
                "set pages to read only the first ones"
            )
        wanted = min(params.pages or ceiling, ceiling)
        # A page tree that declares no count is measured while reading, up to ``wanted``.
        pages = wanted if count is None else min(count, wanted)
        return _Plan(artifact, stem_of(artifact.name), pages, wanted, params.pages is not None)

    def _extract(self, state: _RunState, plan: _Plan, params: PdfExtractParams) -> dict[str, Any]:
        tables: list[str] = []
        with open_pdf(state.ctx, plan.artifact.id, self.limits) as document:
            pages = document.pages(
                plan.limit, words=params.words, tables=params.tables, allow_more=plan.prefix
            )
            chunks = _json_chunks(
                plan.artifact, document, state.tables_written(plan, pages, tables)
            )
            output = state.ctx.write_output(
                f"{plan.stem}.extract.json", chunks, content_type="application/json"
            )
        return {
            "artifact_id": plan.artifact.id,
            "name": plan.artifact.name,
            "pages": document.pages_read,
            "truncated": document.truncated,
            "fields": len(document.fields),
            "output": output.name,
            "tables": tables,
        }


class _RunState:
    """Progress by page across every input, and the task's count of outputs."""

    def __init__(self, ctx: TaskContext, limits: PdfLimits, total: int) -> None:
        self.ctx = ctx
        self._limits = limits
        self._total = total
        self._done = 0
        self._outputs = 0
        ctx.progress(0, total)

    def tables_written(
        self, plan: _Plan, pages: Iterator[PageContent], written: list[str]
    ) -> Iterator[PageContent]:
        """``pages``, with each page's tables stored as CSVs and progress reported as it
        passes: the JSON stream that consumes the pages drives both."""
        self._count_output(plan)  # the JSON itself
        for page in pages:
            for index, table in enumerate(page.tables or (), start=1):
                self._count_output(plan)
                name = f"{plan.stem}.p{page.number}.t{index}.csv"
                self.ctx.write_output(name, _csv(table), content_type="text/csv")
                written.append(name)
            self._done += 1
            # A page tree that under-declared its pages must not report over 100 %.
            self._total = max(self._total, self._done)
            self.ctx.progress(self._done, self._total)
            yield page

    def finish(self) -> None:
        if self._done < self._total:  # a document had fewer pages than planned
            self.ctx.progress(self._done, self._done)

    def _count_output(self, plan: _Plan) -> None:
        self._outputs += 1
        if self._outputs > self._limits.max_outputs:
            raise TaskFailed(
                f"{plan.artifact.name}: the task would write more than "
                f"{self._limits.max_outputs} outputs"
            )


def _json_chunks(
    artifact: Artifact, document: PdfDocument, pages: Iterator[PageContent]
) -> Iterator[bytes]:
    source = {"artifact_id": artifact.id, "name": artifact.name, "sha256": artifact.sha256}
    yield b'{"source": ' + _dumps(source)
    yield b', "page_count": ' + _dumps(document.page_count)
    yield b', "pages": ['
    for index, page in enumerate(pages):
        yield (b", " if index else b"") + _dumps(page.as_json())
    # Known only once the pages were read: whether pages were left unread.
    yield b'], "truncated": ' + _dumps(document.truncated)
    yield b', "fields": ' + _dumps(document.fields) + b"}"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _csv(table: Table) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerows(table)
    return text.getvalue().encode()
