"""The private parts of pypdf and pdfminer the document processors lean on are still there.

The code degrades without them (memory grows with the pages read; filled forms lose their
fixed document ID, or flatten through the public path), so an upgrade that removes one would
pass every other test: this one fails instead, and the upgrade is noticed here.
"""

from __future__ import annotations

import io

from pdfplumber.pdf import PDF
from pypdf import PdfReader, PdfWriter
from pypdf.generic import ArrayObject, ByteStringObject, StreamObject

from ephemera.processors.documents.extraction import DOCUMENT_CACHES, RESOURCE_CACHES, forget
from tests.documents import form_template


def test_pdfminer_keeps_the_caches_dropped_after_each_page() -> None:
    with PDF(io.BytesIO(form_template())) as pdf:
        pdf.pages[0].extract_text()
        for name in DOCUMENT_CACHES:
            assert isinstance(getattr(pdf.doc, name, None), dict), name
        for name in RESOURCE_CACHES:
            assert isinstance(getattr(pdf.rsrcmgr, name, None), dict), name
        assert pdf.doc._cached_objs, "reading a page caches its objects"
        forget(pdf)
        assert not pdf.doc._cached_objs
        assert not pdf.rsrcmgr._cached_fonts


def test_pypdf_writes_the_document_id_set_on_its_private_attribute() -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(form_template())))
    writer._ID = ArrayObject([ByteStringObject(b"0123456789abcdef")] * 2)
    out = io.BytesIO()
    writer.write(out)
    ids = PdfReader(io.BytesIO(out.getvalue())).trailer["/ID"]
    assert isinstance(ids, ArrayObject)
    assert [bytes(i.original_bytes) for i in ids] == [b"0123456789abcdef"] * 2


def test_pypdf_adds_an_indirect_object_through_its_private_method() -> None:
    writer = PdfWriter()
    reference = writer._add_object(StreamObject())
    assert isinstance(reference.get_object(), StreamObject)
