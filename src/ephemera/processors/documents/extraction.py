"""PDF inputs read one page at a time with pdfplumber: text, words, tables.

The input is opened by :mod:`inputs` (size, header, password, declared page count, form
fields). The page count is enforced again while reading, since a page tree's count can lie.
Before a page is interpreted, the streams it will decode are measured within a budget
(:mod:`expansion`), so a compressed bomb fails instead of filling memory. Pages are read one
at a time and forgotten: pdfminer keeps every object it resolves and every font it loads, so
those caches are dropped after each page, and memory stays flat whether a document has ten
pages or ten thousand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pdfminer.pdfpage import PDFPage
from pdfplumber.page import Page
from pdfplumber.pdf import PDF

from ephemera.processors import TaskContext, TaskFailed
from ephemera.processors.documents.acroform import FieldValue
from ephemera.processors.documents.expansion import Budget, Expanded, object_streams
from ephemera.processors.documents.inputs import PdfInput, open_input, reason
from ephemera.processors.documents.limits import MiB, PdfLimits

POSITION_DIGITS = 2  # 1/100 pt: far finer than any glyph, and stable across runs

__all__ = ["FieldValue", "PageContent", "PdfDocument", "Table", "open_pdf"]

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
    """An opened PDF input, read through pdfplumber. ``page_count`` is what its page tree
    declares (None if it declares nothing usable); ``fields`` are its AcroForm fields'
    values by qualified name."""

    source: PdfInput
    _pdf: PDF = field(repr=False)
    _limits: PdfLimits = field(repr=False)
    _budget: Budget = field(repr=False)
    # What the last reading of pages found: how many, and whether more were left unread.
    pages_read: int = 0
    truncated: bool = False

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def label(self) -> str:
        return self.source.label

    @property
    def page_count(self) -> int | None:
        return self.source.page_count

    @property
    def fields(self) -> dict[str, FieldValue]:
        return {f.name: f.value for f in self.source.fields}

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
                    raise self.source.failed(f"has more than {first} pages")
                self.truncated = True
                return
            content = self._read(page_obj, self.pages_read + 1, words, tables)
            self.pages_read += 1
            yield content
        if self.pages_read == 0:
            raise self.source.failed("is not a readable PDF (no pages)")

    def _page_objects(self) -> Iterator[PDFPage]:
        pages = PDFPage.create_pages(self._pdf.doc)
        while True:
            try:
                page_obj = next(pages)
            except StopIteration:
                return
            except Exception as exc:
                raise self.source.failed(f"is not a readable PDF ({reason(exc)})") from None
            yield page_obj

    def _read(self, page_obj: PDFPage, number: int, words: bool, tables: bool) -> PageContent:
        try:
            self._budget.page(page_obj.contents, page_obj.resources)
        except Expanded:
            raise self._expanded(f"page {number}") from None
        except Exception as exc:
            raise self.source.failed(f"page {number} is not readable ({reason(exc)})") from None
        page = Page(self._pdf, page_obj, page_number=number)
        try:
            if len(page.chars) > self._limits.max_chars_per_page:
                raise self.source.failed(
                    f"page {number} has more than {self._limits.max_chars_per_page} characters"
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
            raise self.source.failed(f"page {number} is not readable ({reason(exc)})") from None
        finally:
            page.close()
            forget(self._pdf)
        return content

    def _expanded(self, what: str) -> TaskFailed:
        limit = self._limits.max_page_stream_bytes
        return self.source.failed(f"{what} expands past the limit of {limit / MiB:g} MiB")

    def check_object_streams(self) -> None:
        """Every object stream within the budget, before pdfminer decodes one whole."""
        try:
            for stream in object_streams(self._pdf.doc):
                self._budget.stream(stream)
        except Expanded:
            raise self._expanded("an object stream") from None
        except Exception as exc:
            raise self.source.failed(f"is not a readable PDF ({reason(exc)})") from None


# pdfminer's private caches, dropped after each page. If an upgrade renames one, dropping it
# is skipped (memory grows with the pages read, nothing breaks), and
# tests/unit/test_pdf_library_internals.py fails so the upgrade is noticed.
DOCUMENT_CACHES = ("_cached_objs", "_parsed_objs")
RESOURCE_CACHES = ("_cached_fonts",)


def forget(pdf: PDF) -> None:
    """Drop what pdfminer cached while reading a page.

    pdfminer caches every object it resolved and every font it loaded, for the life of the
    document: kept, they would hold every page's content streams. A later page that shares a
    font or an object stream parses it again, which is cheap in comparison."""
    for owner, names in ((pdf.doc, DOCUMENT_CACHES), (pdf.rsrcmgr, RESOURCE_CACHES)):
        for name in names:
            cache = getattr(owner, name, None)
            if isinstance(cache, dict):
                cache.clear()
    pdf.flush_cache()


@contextmanager
def open_pdf(
    ctx: TaskContext, artifact_id: str, limits: PdfLimits | None = None
) -> Iterator[PdfDocument]:
    """The input ``artifact_id`` opened as a PDF; TaskFailed if it is too large, encrypted
    with a password, or not a PDF. Pages are read through the document while it is open."""
    limits = limits or PdfLimits()
    with open_input(ctx, artifact_id, limits) as source:
        pdf = source.plumber()
        try:
            document = PdfDocument(source, pdf, limits, Budget(limits.max_page_stream_bytes))
            document.check_object_streams()
            yield document
        finally:
            # Not pdf.close(): it would build a Page for every page of the document first.
            pdf.flush_cache()


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
