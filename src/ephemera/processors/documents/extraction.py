"""PDF inputs opened under limits and read one page at a time: text, words, tables, fields.

A PDF is hostile until read. Its bytes are copied once to a spooled temporary file (in
memory while small, on disk beyond), because the parsers seek and an input stream need not.
Everything that can go wrong while parsing becomes a :class:`TaskFailed` naming the input:
a password it would take, a file that is not a PDF, a page count above the ceiling (known
from the page tree before any page is read, and enforced again while reading, since a page
tree's count can lie). Pages are read one at a time and forgotten: pdfminer keeps every object
it resolves and every font it loads, so those caches are dropped after each page, and memory
stays flat whether a document has ten pages or ten thousand.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import pypdf
import pypdf.generic
from pdfminer.pdfdocument import PDFPasswordIncorrect
from pdfminer.pdfpage import PDFPage
from pdfminer.pdftypes import resolve1
from pdfplumber.page import Page
from pdfplumber.pdf import PDF
from pdfplumber.utils.exceptions import PdfminerException

from ephemera.processors import TaskContext, TaskFailed
from ephemera.processors.documents.limits import PdfLimits

SPOOL_IN_MEMORY = 8 * 1024 * 1024  # smaller PDFs are parsed from memory
COPY_CHUNK = 1024 * 1024
HEADER_WINDOW = 1024  # readers accept "%PDF-" anywhere in the first KiB
POSITION_DIGITS = 2  # 1/100 pt: far finer than any glyph, and stable across runs

FieldValue = str | list[str] | None
Table = list[list[str]]


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    x0: float
    x1: float
    top: float  # from the top of the page, in points
    bottom: float

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "x0": self.x0,
            "x1": self.x1,
            "top": self.top,
            "bottom": self.bottom,
        }


@dataclass(frozen=True, slots=True)
class PageContent:
    number: int  # 1-based
    width: float
    height: float
    text: str
    words: list[Word] | None  # None: not asked for
    tables: list[Table] | None

    def as_json(self) -> dict[str, Any]:
        page: dict[str, Any] = {
            "number": self.number,
            "width": self.width,
            "height": self.height,
            "text": self.text,
        }
        if self.words is not None:
            page["words"] = [w.as_json() for w in self.words]
        if self.tables is not None:
            page["tables"] = self.tables
        return page


@dataclass(slots=True)
class PdfDocument:
    """An opened PDF input. ``page_count`` is what its page tree declares (None if it
    declares nothing usable); ``fields`` are its AcroForm fields by qualified name."""

    name: str
    label: str  # the input as messages name it
    page_count: int | None
    fields: dict[str, FieldValue]
    _pdf: PDF = field(repr=False)
    _limits: PdfLimits = field(repr=False)
    # What the last reading of pages found: how many, and whether more were left unread.
    pages_read: int = 0
    truncated: bool = False

    def pages(
        self, first: int, *, words: bool = True, tables: bool = True, allow_more: bool = False
    ) -> Iterator[PageContent]:
        """The first ``first`` pages, in order, each read and released before the next.

        A page beyond ``first`` fails the task unless ``allow_more`` (the caller asked for a
        prefix); it is detected without reading it.
        """
        self.pages_read, self.truncated = 0, False
        for page_obj in self._page_objects():
            if self.pages_read == first:
                if not allow_more:
                    raise TaskFailed(f"{self.label}: has more than {first} pages")
                self.truncated = True
                return
            content = self._read(page_obj, self.pages_read + 1, words, tables)
            self.pages_read += 1
            yield content
        if self.pages_read == 0:
            raise TaskFailed(f"{self.label}: is not a readable PDF (no pages)")

    def _page_objects(self) -> Iterator[PDFPage]:
        pages = PDFPage.create_pages(self._pdf.doc)
        while True:
            try:
                page_obj = next(pages)
            except StopIteration:
                return
            except Exception as exc:
                raise self._unreadable(exc) from None
            yield page_obj

    def _read(self, page_obj: PDFPage, number: int, words: bool, tables: bool) -> PageContent:
        page = Page(self._pdf, page_obj, page_number=number)
        try:
            if len(page.chars) > self._limits.max_chars_per_page:
                raise TaskFailed(
                    f"{self.label}: page {number} has more than "
                    f"{self._limits.max_chars_per_page} characters"
                )
            content = PageContent(
                number=number,
                width=_round(page.width),
                height=_round(page.height),
                text=page.extract_text(),
                words=[_word(w) for w in page.extract_words()] if words else None,
                tables=[_table(t) for t in page.extract_tables()] if tables else None,
            )
        except TaskFailed:
            raise
        except Exception as exc:
            raise TaskFailed(
                f"{self.label}: page {number} is not readable ({_reason(exc)})"
            ) from None
        finally:
            page.close()
            self._forget()
        return content

    def _forget(self) -> None:
        # pdfminer caches every object it resolved and every font it loaded, for the life of
        # the document: kept, they would hold every page's content streams. A later page
        # that shares a font or an object stream parses it again, which is cheap in comparison.
        doc = self._pdf.doc
        doc._cached_objs.clear()
        doc._parsed_objs.clear()
        self._pdf.rsrcmgr._cached_fonts.clear()
        self._pdf.flush_cache()

    def _unreadable(self, exc: BaseException) -> TaskFailed:
        return TaskFailed(f"{self.label}: is not a readable PDF ({_reason(exc)})")


@contextmanager
def open_pdf(
    ctx: TaskContext, artifact_id: str, limits: PdfLimits | None = None
) -> Iterator[PdfDocument]:
    """The input ``artifact_id`` opened as a PDF; TaskFailed if it is too large, encrypted
    with a password, or not a PDF. Pages are read through the document while it is open."""
    limits = limits or PdfLimits()
    artifact = ctx.input(artifact_id)
    label = artifact.name
    if artifact.size > limits.max_bytes:
        raise TaskFailed(
            f"{label}: is {artifact.size} bytes, more than the limit of {limits.max_bytes} "
            "bytes for a PDF"
        )
    with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as spool:
        with ctx.open_input(artifact_id) as stream:
            _copy(stream, spool, limits.max_bytes, label)
        spool.seek(0)
        if b"%PDF-" not in spool.read(HEADER_WINDOW):
            raise TaskFailed(f"{label}: is not a readable PDF (no %PDF header)")
        spool.seek(0)
        pdf = _parse(spool, label)
        try:
            page_count = _declared_page_count(pdf)
            if page_count == 0:
                raise TaskFailed(f"{label}: is not a readable PDF (no pages)")
            fields = _form_fields(spool, label) if "AcroForm" in pdf.doc.catalog else {}
            yield PdfDocument(artifact.name, label, page_count, fields, pdf, limits)
        finally:
            # Not pdf.close(): it would build a Page for every page of the document first.
            pdf.flush_cache()


def _copy(source: IO[bytes], target: IO[bytes], limit: int, label: str) -> None:
    copied = 0
    while chunk := source.read(COPY_CHUNK):
        copied += len(chunk)
        if copied > limit:
            raise TaskFailed(f"{label}: is more than the limit of {limit} bytes for a PDF")
        target.write(chunk)


def _parse(stream: IO[bytes], label: str) -> PDF:
    try:
        return PDF(stream, stream_is_external=True)  # type: ignore[arg-type]
    except PdfminerException as exc:
        cause = exc.args[0] if exc.args else exc
        if isinstance(cause, PDFPasswordIncorrect):
            raise TaskFailed(f"{label}: is encrypted; a password is not supported") from None
        raise TaskFailed(f"{label}: is not a readable PDF ({_reason(cause)})") from None
    except Exception as exc:
        raise TaskFailed(f"{label}: is not a readable PDF ({_reason(exc)})") from None


def _declared_page_count(pdf: PDF) -> int | None:
    try:
        pages = resolve1(pdf.doc.catalog.get("Pages"))
        count = resolve1(pages.get("Count")) if isinstance(pages, dict) else None
    except Exception:
        return None  # a broken page tree: reading the pages will say so
    return count if isinstance(count, int) and count >= 0 else None


def _form_fields(stream: IO[bytes], label: str) -> dict[str, FieldValue]:
    stream.seek(0)
    try:
        reader = pypdf.PdfReader(stream, strict=False)
        if reader.is_encrypted:
            reader.decrypt("")  # pdfminer opened it without a password, so this succeeds
        found = reader.get_fields() or {}
        return {str(name): _field_value(f.get("/V")) for name, f in found.items()}
    except Exception as exc:
        raise TaskFailed(f"{label}: has an unreadable form ({_reason(exc)})") from None


def _field_value(value: Any) -> FieldValue:
    value = value.get_object() if isinstance(value, pypdf.generic.IndirectObject) else value
    if value is None:
        return None
    if isinstance(value, list):
        return [str(_field_value(v) or "") for v in value]
    if isinstance(value, pypdf.generic.NameObject):
        return str(value)[1:]  # a checkbox's "/Yes" is the value "Yes"
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _word(word: dict[str, Any]) -> Word:
    return Word(
        text=str(word["text"]),
        x0=_round(word["x0"]),
        x1=_round(word["x1"]),
        top=_round(word["top"]),
        bottom=_round(word["bottom"]),
    )


def _table(rows: list[list[str | None]]) -> Table:
    # A merged cell spans several columns; pdfplumber gives the others None.
    return [[cell or "" for cell in row] for row in rows]


def _round(value: Any) -> float:
    return round(float(value), POSITION_DIGITS)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
