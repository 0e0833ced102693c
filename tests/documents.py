"""PDFs and CSVs for the document processor tests, built here so every test knows its input.

Templates come from reportlab's AcroForm support (``invariant``: no clock in the file, so a
template is the same bytes in every run). Hostile documents are made from good ones.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pypdf import PdfReader, PdfWriter
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

# The bill-of-lading template's fields. The CSV's columns name some of them in another case or
# spacing (the loose match); no column fills "carrier", and the column "notes" fills nothing.
TEXT_FIELDS = ("bol_number", "shipper", "Consignee Name", "weight_kg", "carrier")
CHECKBOX = "hazmat"
RADIO = "mode"
RADIO_STATES = ("road", "rail", "sea")
ALL_FIELDS = (*TEXT_FIELDS, CHECKBOX, RADIO)


def form_template(*, with_fields: bool = True, title: str = "Bill of lading") -> bytes:
    """A one-page A4 form: five text fields, a check box, a three-button radio group."""
    buffer = io.BytesIO()
    page = canvas.Canvas(buffer, pagesize=A4, invariant=True)
    page.setFont("Helvetica-Bold", 14)
    page.drawString(72, 790, title)
    page.setFont("Helvetica", 9)
    if with_fields:
        form = page.acroForm
        for index, name in enumerate(TEXT_FIELDS):
            y = 740 - 36 * index
            page.drawString(72, y + 22, name)
            form.textfield(name=name, x=72, y=y, width=320, height=18, borderWidth=0)
        page.drawString(72, 550, CHECKBOX)
        form.checkbox(name=CHECKBOX, x=140, y=546, size=14, buttonStyle="check")
        for index, state in enumerate(RADIO_STATES):
            page.drawString(72 + 80 * index, 510, state)
            form.radio(name=RADIO, value=state, x=100 + 80 * index, y=506, size=14)
    page.showPage()
    page.save()
    return buffer.getvalue()


def many_pages(count: int) -> bytes:
    writer = PdfWriter()
    for _ in range(count):
        writer.add_blank_page(width=200, height=200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def bomb(expanded_mib: int) -> bytes:
    """One page whose content stream, a few hundred KiB deflated, inflates to
    ``expanded_mib`` MiB of spaces: a compression bomb."""
    deflater = zlib.compressobj(9)
    block = b" " * (1024 * 1024)
    data = b"".join(deflater.compress(block) for _ in range(expanded_mib)) + deflater.flush()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % offset for offset in offsets)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def encrypted(pdf: bytes) -> bytes:
    """Encrypted with a user password (which the processors are never given)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password="secret", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def broken_xref(pdf: bytes) -> bytes:
    """The cross-reference table and every object header garbled: nothing left to recover."""
    start = pdf.rindex(b"xref")
    broken = pdf[:start] + b"xref\n0 zz\nthis is no table\ntrailer\n<< /Size 1 >>\n%%EOF\n"
    return broken.replace(b" 0 obj", b" 0 jbo")


@dataclass(frozen=True)
class Shipment:
    bol_number: str
    shipper: str
    consignee: str
    weight_kg: str
    hazmat: bool
    mode: str


def shipments(count: int) -> list[Shipment]:
    """``count`` distinct rows, with non-ASCII text, punctuation and empty cells among them."""
    shippers = ["ACME Freight (Ltd)", "Müller & Söhne GmbH", "Łódź Logistics", "O'Brien \\ Co"]
    return [
        Shipment(
            bol_number=f"BOL-{1000 + i}",
            shipper=shippers[i % len(shippers)],
            consignee=f"Consignee {i}" if i % 7 else "",
            weight_kg=f"{(i + 1) * 12.5:.1f}",
            hazmat=i % 3 == 0,
            mode=RADIO_STATES[i % len(RADIO_STATES)] if i % 5 else "",
        )
        for i in range(count)
    ]


BOL_COLUMNS = ["BOL_NUMBER", "shipper", "consignee name", "weight_kg", "hazmat", "mode", "notes"]


def bol_csv(rows: Sequence[Shipment], *, delimiter: str = ",", bom: bool = False) -> bytes:
    """The shipments with the columns of BOL_COLUMNS (``notes`` fills no field)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(BOL_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row.bol_number,
                row.shipper,
                row.consignee,
                row.weight_kg,
                "yes" if row.hazmat else "no",
                row.mode,
                "fragile; keep dry",
            ]
        )
    return (b"\xef\xbb\xbf" if bom else b"") + text.getvalue().encode()


def expected_fields(row: Shipment) -> dict[str, str]:
    """The values pypdf's ``get_fields`` reads back from a form filled with ``row``."""
    return {
        "bol_number": row.bol_number,
        "shipper": row.shipper,
        "Consignee Name": row.consignee,
        "weight_kg": row.weight_kg,
        "carrier": "",
        "hazmat": "/Yes" if row.hazmat else "/Off",
        "mode": f"/{row.mode}" if row.mode else "/Off",
    }


def field_values(pdf: bytes) -> dict[str, str]:
    fields = PdfReader(io.BytesIO(pdf)).get_fields() or {}
    return {name: str(field.get("/V", "")) for name, field in fields.items()}


def page_text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


class LazyStream(io.RawIOBase):
    """``size`` bytes of CSV made up as they are read: a header, then ``row`` repeated.

    Never held whole anywhere, so a test can hand a processor a 1 GiB file it never stores.
    """

    def __init__(self, header: bytes, row: bytes, size: int) -> None:
        self._chunks = self._generate(header, row, size)
        self._pending = memoryview(b"")

    @staticmethod
    def _generate(header: bytes, row: bytes, size: int) -> Iterator[bytes]:
        yield header
        left = size - len(header)
        block = row * max(1, (1 << 20) // len(row))
        while left > 0:
            chunk = block[:left]
            left -= len(chunk)
            yield chunk

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
