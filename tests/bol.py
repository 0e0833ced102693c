"""Synthetic PDFs for the document processors' tests: a page with a ruled table, bills of
lading (printed "Label: value" lines or a filled AcroForm), and hostile documents.

Everything is generated in the test run from the arguments given, so nothing binary is
stored in the repository and a failing test fails the same way every time.
"""

from __future__ import annotations

import io
import secrets
import zlib
from collections.abc import Mapping, Sequence

from pypdf import PdfReader, PdfWriter
from pypdf.generic import ArrayObject, DictionaryObject, NameObject
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

PAGE_WIDTH, PAGE_HEIGHT = A4

# The table of table_pdf(): cells drawn as text inside ruling lines, as a spreadsheet prints.
TABLE_ORIGIN = (72.0, 500.0)  # top-left corner, in points from the page's bottom-left
CELL_WIDTH = 120.0
CELL_HEIGHT = 24.0

# The fields of a bill of lading, in the order a printed one lists them: (column, label).
BOL_FIELDS = (
    ("bol_number", "BOL Number"),
    ("shipper", "Shipper"),
    ("consignee", "Consignee"),
    ("carrier", "Carrier"),
    ("weight_kg", "Weight kg"),
    ("pieces", "Pieces"),
)


def table_pdf(title: str, paragraph: str, table: Sequence[Sequence[str]]) -> bytes:
    """One page: a title, a paragraph, and ``table`` with a ruled border around every cell;
    a second page with the paragraph alone."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4)
    canvas.setFont("Helvetica-Bold", 16)
    canvas.drawString(72, PAGE_HEIGHT - 72, title)
    canvas.setFont("Helvetica", 11)
    canvas.drawString(72, PAGE_HEIGHT - 100, paragraph)
    left, top = TABLE_ORIGIN
    rows, columns = len(table), len(table[0])
    for r in range(rows + 1):
        y = top - r * CELL_HEIGHT
        canvas.line(left, y, left + columns * CELL_WIDTH, y)
    for c in range(columns + 1):
        x = left + c * CELL_WIDTH
        canvas.line(x, top, x, top - rows * CELL_HEIGHT)
    for r, row in enumerate(table):
        for c, cell in enumerate(row):
            canvas.drawString(left + c * CELL_WIDTH + 6, top - (r + 1) * CELL_HEIGHT + 8, cell)
    canvas.showPage()
    canvas.setFont("Helvetica", 11)
    canvas.drawString(72, PAGE_HEIGHT - 72, paragraph)
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def bol_pdf(values: Mapping[str, str], *, separator: str = ": ") -> bytes:
    """A printed bill of lading: a heading, then one "Label: value" line per field given
    (``values`` maps BOL_FIELDS columns to values; a column left out is not printed)."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4)
    canvas.setFont("Helvetica-Bold", 14)
    canvas.drawString(72, PAGE_HEIGHT - 60, "STRAIGHT BILL OF LADING - SHORT FORM")
    canvas.setFont("Helvetica", 11)
    y = PAGE_HEIGHT - 100
    for column, label in BOL_FIELDS:
        if column in values:
            canvas.drawString(72, y, f"{label}{separator}{values[column]}")
            y -= 20
    canvas.drawString(72, 72, "Received, subject to the classifications and tariffs in effect.")
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def form_bol_pdf(values: Mapping[str, str]) -> bytes:
    """A bill of lading as a filled, unflattened AcroForm: one text field per BOL_FIELDS
    column, named after it, with the label printed beside it and the value only in the form."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=A4)
    canvas.setFont("Helvetica", 11)
    y = PAGE_HEIGHT - 100
    for column, label in BOL_FIELDS:
        canvas.drawString(72, y + 6, label)
        canvas.acroForm.textfield(
            name=column, value=values.get(column, ""), x=200, y=y, width=250, height=20
        )
        y -= 30
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def form_without_fields_pdf() -> bytes:
    """A PDF whose catalogue has an AcroForm dictionary with an empty field list."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(bol_pdf({"bol_number": "B-1"}))))
    form = DictionaryObject({NameObject("/Fields"): ArrayObject()})
    writer._root_object[NameObject("/AcroForm")] = writer._add_object(form)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def encrypted_pdf(data: bytes) -> bytes:
    """``data`` encrypted so that opening it needs a (random, forgotten) password."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    password = secrets.token_hex(8)
    writer.encrypt(user_password=password, owner_password=password, algorithm="AES-256")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def owner_locked_pdf(data: bytes) -> bytes:
    """``data`` encrypted with an owner password only: any reader opens it without one."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-256")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def garbage_xref_pdf(data: bytes) -> bytes:
    """``data`` with its objects overwritten by garbage: the header and xref table remain,
    pointing at nothing readable."""
    start = data.index(b"1 0 obj")
    end = data.rindex(b"\nxref")
    return data[:start] + bytes((i * 37) % 251 for i in range(end - start)) + data[end:]


def truncated_pdf(data: bytes) -> bytes:
    """The first 40 bytes of ``data``: a header and nothing after it."""
    return data[:40]


def many_pages_pdf(pages: int, *, declared: int | None = None) -> bytes:
    """``pages`` blank A4 pages, written directly (a PDF library takes seconds for 10,000);
    the page tree declares ``declared`` pages (default: the truth). Each page has a content
    stream of its own that inflates from 64 bytes to 64 KiB of blanks: a reader that kept
    every page's objects would hold 64 KiB a page."""
    blank = zlib.compress(b" " * 65536, 9)
    stream = b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(blank), blank)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count %d /MediaBox [0 0 595 842] /Kids [%s] >>"
        % (
            pages if declared is None else declared,
            b" ".join(b"%d 0 R" % (2 * n + 3) for n in range(pages)),
        ),
    ]
    for n in range(pages):
        objects += [b"<< /Type /Page /Parent 2 0 R /Contents %d 0 R >>" % (2 * n + 4), stream]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()
