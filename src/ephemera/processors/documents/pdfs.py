"""Opening a PDF input safely: bounded size, no password, a bounded page count.

A PDF is read whole into memory (pypdf seeks all over it), so its size is checked against
the limit before a byte is read. Whatever pypdf raises on a broken file (its own errors, but
also KeyError, ValueError, RecursionError on a hostile one) becomes one clear task failure.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pypdf import PdfReader
from pypdf.generic import DictionaryObject

from ephemera.processors import TaskContext, TaskFailed
from ephemera.processors.documents.limits import PdfLimits

# Where a PDF's header may start: readers tolerate some junk before it, but not a whole file.
HEADER_WINDOW = 1024


@dataclass(frozen=True, slots=True)
class PdfInput:
    """A PDF input that opened: its bytes (for re-reading), its recorded digest and pages."""

    artifact_id: str
    name: str
    sha256: str
    data: bytes
    pages: int

    @property
    def label(self) -> str:
        return f"{self.name} ({self.artifact_id})"

    def reader(self) -> PdfReader:
        """A fresh reader over the bytes: nothing one use resolves or caches leaks into the next."""
        return parse(self.data, self.label)


def open_pdf(ctx: TaskContext, artifact_id: str, limits: PdfLimits) -> PdfInput:
    """The input, read and checked; TaskFailed naming it when it cannot be used."""
    artifact = ctx.input(artifact_id)
    label = f"{artifact.name} ({artifact_id})"
    if artifact.size > limits.max_bytes:
        raise TaskFailed(
            f"{label} is {artifact.size} bytes, more than the limit of {limits.max_bytes}"
        )
    with ctx.open_input(artifact_id) as stream:
        data = stream.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise TaskFailed(f"{label} is larger than the limit of {limits.max_bytes} bytes")
    if b"%PDF-" not in data[:HEADER_WINDOW]:
        raise TaskFailed(f"{label} is not a readable PDF (no %PDF header)")
    reader = parse(data, label)
    pages = page_count(reader, label)
    if pages > limits.max_pages:
        raise TaskFailed(f"{label} has {pages} pages, more than the limit of {limits.max_pages}")
    try:
        # Now the tree itself, once its declared size is known to be small.
        pages = len(reader.pages)
    except Exception as exc:
        raise unreadable(label, exc) from None
    if pages > limits.max_pages:
        raise TaskFailed(f"{label} has {pages} pages, more than the limit of {limits.max_pages}")
    return PdfInput(artifact_id, artifact.name, artifact.sha256, data, pages)


def parse(data: bytes, label: str) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = reader.is_encrypted
    except Exception as exc:
        raise unreadable(label, exc) from None
    if encrypted:
        raise TaskFailed(f"{label} is encrypted; a password is not supported")
    return reader


def page_count(reader: PdfReader, label: str) -> int:
    # The page tree's declared count, read without walking the tree: a 10,000-page file is
    # refused in microseconds, before a page object is read.
    try:
        root = reader.trailer["/Root"].get_object()
        if not isinstance(root, DictionaryObject):
            raise ValueError("/Root is not a dictionary")
        pages = root["/Pages"].get_object()
        if not isinstance(pages, DictionaryObject):
            raise ValueError("/Pages is not a dictionary")
        count: object = pages["/Count"].get_object()
    except Exception as exc:
        raise unreadable(label, exc) from None
    if not isinstance(count, int) or count < 0:
        raise TaskFailed(f"{label} is not a readable PDF (its page count is {count!r})")
    return int(count)


def unreadable(label: str, exc: BaseException) -> TaskFailed:
    detail = str(exc).strip() or type(exc).__name__
    if len(detail) > 200:
        detail = detail[:200] + "…"
    return TaskFailed(f"{label} is not a readable PDF ({detail})")
