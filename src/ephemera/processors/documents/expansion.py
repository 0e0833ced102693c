"""How far a PDF's streams expand when decoded, measured within a budget before pdfminer
decodes them.

pdfminer inflates a stream whole, with no ceiling: a 200 KB page whose content stream is
zeros compressed a thousandfold costs hundreds of MiB. So before a page is interpreted, every
stream it will decode (its contents, and the form XObjects, fonts, patterns and CMaps its
resources reach) is measured here, inflating in small chunks that are counted and dropped;
a page whose streams add up past the budget fails before pdfminer reads a byte of them.
Images are not measured: pdfminer and pdfplumber never decode them.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator

from pdfminer.ascii85 import ascii85decode, asciihexdecode
from pdfminer.lzw import LZWDecoder
from pdfminer.pdfdocument import PDFDocument
from pdfminer.pdftypes import (
    LITERALS_ASCII85_DECODE,
    LITERALS_ASCIIHEX_DECODE,
    LITERALS_FLATE_DECODE,
    LITERALS_LZW_DECODE,
    LITERALS_RUNLENGTH_DECODE,
    PDFObjRef,
    PDFStream,
    resolve1,
)
from pdfminer.psparser import LIT
from pdfminer.runlength import rldecode

INFLATE_CHUNK = 1024 * 1024
IMAGE = LIT("Image")
# Keys that lead from a resource back up the document (to a page, its parent, its
# annotations): following them would measure the whole file, not the page.
NOT_FOLLOWED = frozenset({"Parent", "P", "Annots", "Pages", "Dest", "A", "Metadata"})


class Expanded(Exception):
    """The streams measured decode to more than the budget."""


class Budget:
    """The bytes a page's streams may decode to; sizes are remembered by object, so a font
    shared by every page is measured once, but counted on each page that uses it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sizes: dict[int, int] = {}

    def page(self, contents: list[object], resources: object) -> int:
        """The decoded size of a page's streams; Expanded past the limit."""
        total = 0
        for stream in _streams([*contents, resources], set()):
            total += self.stream(stream, self.limit - total)
        return total

    def stream(self, stream: PDFStream, room: int | None = None) -> int:
        room = self.limit if room is None else room
        known = self._sizes.get(stream.objid) if stream.objid is not None else None
        size = known if known is not None else decoded_size(stream, self.limit)
        if stream.objid is not None:
            self._sizes[stream.objid] = size
        if size > room:
            raise Expanded
        return size


def object_streams(doc: PDFDocument) -> Iterator[PDFStream]:
    """Every object stream the cross-reference tables name: pdfminer decodes one whole to
    resolve any object in it."""
    seen: set[int] = set()
    for xref in doc.xrefs:
        for objid in xref.get_objids():
            container = xref.get_pos(objid)[0]
            if container is None or container in seen:
                continue
            seen.add(container)
            stream = resolve1(doc.getobj(container))
            if isinstance(stream, PDFStream):
                yield stream


def decoded_size(stream: PDFStream, limit: int) -> int:
    """What ``stream`` decodes to, in bytes; Expanded as soon as it passes ``limit``."""
    if stream.data is not None:
        return len(stream.data)
    data = stream.get_rawdata() or b""
    if stream.decipher is not None and stream.objid is not None and stream.genno is not None:
        data = stream.decipher(stream.objid, stream.genno, data, stream.attrs)
    filters = stream.get_filters()
    size = len(data)
    for index, (name, _params) in enumerate(filters):
        last = index == len(filters) - 1
        if name in LITERALS_FLATE_DECODE:
            if last:
                return _inflated_size(data, limit)
            data = b"".join(_bounded(_inflate(data), limit))
        elif name in LITERALS_LZW_DECODE:
            data = b"".join(_bounded(LZWDecoder(io.BytesIO(data)).run(), limit))
        elif name in LITERALS_RUNLENGTH_DECODE:
            if _run_length_size(data) > limit:
                raise Expanded
            if last:
                return _run_length_size(data)
            data = rldecode(data)
        elif name in LITERALS_ASCII85_DECODE or name in LITERALS_ASCIIHEX_DECODE:
            decode: Callable[[bytes], bytes] = (
                ascii85decode if name in LITERALS_ASCII85_DECODE else asciihexdecode
            )
            data = decode(data)  # never longer than its input
        else:
            break  # image codecs (DCT, JPX, JBIG2, CCITT): kept encoded
        size = len(data)
    if size > limit:
        raise Expanded
    return size


def _streams(values: list[object], seen: set[int]) -> Iterator[PDFStream]:
    """The streams reachable from ``values`` through dictionaries and arrays, images aside."""
    pending = list(values)
    while pending:
        value = pending.pop()
        if isinstance(value, PDFObjRef):
            if value.objid in seen:
                continue
            seen.add(value.objid)
            value = resolve1(value)
        if isinstance(value, PDFStream):
            if value.attrs.get("Subtype") is IMAGE:
                continue
            yield value
            pending.extend(v for k, v in value.attrs.items() if k not in NOT_FOLLOWED)
        elif isinstance(value, dict):
            pending.extend(v for k, v in value.items() if k not in NOT_FOLLOWED)
        elif isinstance(value, list):
            pending.extend(value)


def _inflate(data: bytes) -> Iterator[bytes]:
    inflater = zlib.decompressobj()
    pending = data
    try:
        while pending and not inflater.eof:
            yield inflater.decompress(pending, INFLATE_CHUNK)
            pending = inflater.unconsumed_tail
        yield inflater.flush()
    except zlib.error:
        return  # pdfminer recovers what it can from a corrupt stream; less, not more


def _inflated_size(data: bytes, limit: int) -> int:
    size = 0
    for chunk in _inflate(data):
        size += len(chunk)
        if size > limit:
            raise Expanded
    return size


def _bounded(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise Expanded
        yield chunk


def _run_length_size(data: bytes) -> int:
    size, index = 0, 0
    while index < len(data):
        length = data[index]
        if length == 128:
            break
        if length < 128:
            size += length + 1
            index += length + 2
        else:
            size += 257 - length
            index += 2
    return size
