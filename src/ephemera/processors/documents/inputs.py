"""Opening a PDF input, once, safely: bounded size, a PDF header, no password, its declared
page count and its form fields.

The input's bytes are copied once to a spooled temporary file (in memory while small, on disk
beyond), because both parsers seek and an input stream need not. pypdf opens it first: it
reads the trailer, the page tree's declared count and the AcroForm under its own decoding
limits, so a document that is not a PDF, wants a password or hides a bomb in its object
streams fails before pdfminer is given it. The readers the processors work with, pypdf's and
pdfplumber's, are then made from the same file by :meth:`PdfInput.pypdf` and
:meth:`PdfInput.plumber`.

Every message names the input the same way: ``<name>: <what is wrong>``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

from pdfminer.pdfdocument import PDFPasswordIncorrect
from pdfplumber.pdf import PDF
from pdfplumber.utils.exceptions import PdfminerException
from pypdf import PasswordType, PdfReader
from pypdf.generic import DictionaryObject

from ephemera.processors import TaskContext, TaskFailed
from ephemera.processors.documents import acroform
from ephemera.processors.documents.acroform import FormField
from ephemera.processors.documents.limits import PdfLimits

SPOOL_IN_MEMORY = 8 * 1024 * 1024  # smaller PDFs stay in memory
COPY_CHUNK = 1024 * 1024
HEADER_WINDOW = 1024  # readers accept "%PDF-" anywhere in the first KiB


@dataclass(slots=True)
class PdfInput:
    """An input that opened as a PDF. ``page_count`` is what its page tree declares (None if
    it declares nothing usable); ``locked`` means encrypted against editing only, opened with
    the empty password."""

    artifact_id: str
    name: str
    sha256: str
    page_count: int | None
    fields: list[FormField]
    locked: bool
    file: IO[bytes] = field(repr=False)

    @property
    def label(self) -> str:
        return self.name

    def failed(self, problem: str) -> TaskFailed:
        return TaskFailed(f"{self.name}: {problem}")

    def pypdf(self) -> PdfReader:
        """A fresh pypdf reader: nothing one use resolves or caches leaks into the next."""
        self.file.seek(0)
        return _pypdf(self.file, self.name)

    def plumber(self) -> PDF:
        """pdfplumber (over pdfminer) on the same file; the caller flushes its caches."""
        self.file.seek(0)
        try:
            return PDF(self.file, stream_is_external=True)  # type: ignore[arg-type]
        except PdfminerException as exc:
            cause = exc.args[0] if exc.args else exc
            if isinstance(cause, PDFPasswordIncorrect):
                raise self.failed("is encrypted; a password is not supported") from None
            raise unreadable(self.name, cause) from None
        except Exception as exc:
            raise unreadable(self.name, exc) from None


@contextmanager
def open_input(ctx: TaskContext, artifact_id: str, limits: PdfLimits) -> Iterator[PdfInput]:
    """The input ``artifact_id`` opened as a PDF while the context lasts; TaskFailed naming
    it if it is too large, not a PDF, encrypted with a password, or has an unreadable form."""
    artifact = ctx.input(artifact_id)
    name = artifact.name
    if artifact.size > limits.max_bytes:
        raise TaskFailed(
            f"{name}: is {artifact.size} bytes, more than the limit of {limits.max_bytes}"
        )
    with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as spool:
        with ctx.open_input(artifact_id) as stream:
            _copy(stream, spool, limits.max_bytes, name)
        spool.seek(0)
        if b"%PDF-" not in spool.read(HEADER_WINDOW):
            raise TaskFailed(f"{name}: is not a readable PDF (no %PDF header)")
        spool.seek(0)
        reader = _pypdf(spool, name)
        locked = reader.is_encrypted
        page_count = declared_pages(reader)
        if page_count == 0:
            raise TaskFailed(f"{name}: is not a readable PDF (no pages)")
        fields = acroform.form_fields(reader, name, limits.max_form_fields)
        del reader
        yield PdfInput(artifact_id, name, artifact.sha256, page_count, fields, locked, spool)


def _copy(source: IO[bytes], target: IO[bytes], limit: int, name: str) -> None:
    copied = 0
    while chunk := source.read(COPY_CHUNK):
        copied += len(chunk)
        if copied > limit:
            raise TaskFailed(f"{name}: is larger than the limit of {limit} bytes")
        target.write(chunk)


def _pypdf(stream: IO[bytes], name: str) -> PdfReader:
    try:
        reader = PdfReader(stream, strict=False)
        # Locked against editing only: the empty user password opens it, as viewers do.
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise TaskFailed(f"{name}: is encrypted; a password is not supported")
        if not isinstance(reader.trailer["/Root"].get_object(), DictionaryObject):
            raise ValueError("its catalog is not a dictionary")
    except TaskFailed:
        raise
    except Exception as exc:
        raise unreadable(name, exc) from None
    return reader


def declared_pages(reader: PdfReader) -> int | None:
    """The page tree's declared count, read without walking the tree: a 10,000-page file is
    refused in microseconds. None when it declares nothing usable (reading says more)."""
    try:
        root = reader.trailer["/Root"].get_object()
        pages = root["/Pages"].get_object() if isinstance(root, DictionaryObject) else None
        count: object = (
            pages["/Count"].get_object() if isinstance(pages, DictionaryObject) else None
        )
    except Exception:
        return None
    return int(count) if isinstance(count, int) and count >= 0 else None


def unreadable(name: str, exc: BaseException) -> TaskFailed:
    return TaskFailed(f"{name}: is not a readable PDF ({reason(exc)})")


def reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
