"""The bounds every document processor reads under, so no document can cost unbounded time
or memory. Each processor's params may lower them, never raise them past these ceilings."""

from __future__ import annotations

from dataclasses import dataclass

from ephemera.processors.documents.tables import CsvLimits

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PdfLimits:
    max_bytes: int = 256 * MiB  # one PDF input
    max_pages: int = 2_000  # pages read from one PDF
    max_chars_per_page: int = 1_000_000  # a page with more text is not a document page
    max_outputs: int = 10_000  # files one task may write (filled forms, per-page tables)
    max_form_fields: int = 10_000  # terminal fields of one AcroForm
    max_template_bytes: int = 16 * MiB  # a form template: pypdf holds it parsed for every row
    # What one page's streams (contents, forms, fonts) may decode to; an object stream too.
    max_page_stream_bytes: int = 64 * MiB


PDF = PdfLimits()
CSV = CsvLimits()
