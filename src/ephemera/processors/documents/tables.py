"""CSV tables read as a bounded stream: a header, then rows one at a time.

What arrives as "a CSV" varies: Excel writes a byte-order mark, European locales use ``;``,
exports use tabs, and hand-edited files have ragged rows. The reader accepts the first three
and refuses the last with the line number, because a row with more fields than the header
would silently lose data and one with fewer would silently fill blanks. Nothing is read
whole: the bytes are counted as they stream, and past ``max_bytes`` (or ``max_rows``) the read
stops with a clear failure, so a 1 GiB upload costs a bounded amount of memory and time. One
row is bounded too: its text (``max_row_chars``, across the lines of quoted newlines) is
refused before the csv module splits it, since a line of a million commas is a million fields.

Blank lines: a line with nothing but whitespace and no delimiter (the empty lines exports
leave at the end) is not a row and is skipped. A line of delimiters alone is a row: with as
many fields as the header it is a row whose values are all empty (for pdf-form-fill, an empty
form), with another count it is ragged. (With a single column the two cannot be told apart,
so a line with no value there is skipped as blank.)
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ephemera.processors import TaskFailed

DELIMITERS = ",;\t|"
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class CsvLimits:
    max_bytes: int = 64 * 1024 * 1024
    max_rows: int = 100_000
    max_columns: int = 512
    max_field_chars: int = 64 * 1024
    max_row_chars: int = 1024 * 1024  # one row's text, quoted newlines included


@dataclass(slots=True)
class Table:
    """A CSV's header and its data rows, which can be iterated once.

    ``rows`` yields ``(line, values)`` with ``line`` the 1-based line number of the row in
    the file (for messages) and ``values`` keyed by the header's column names.
    """

    name: str
    delimiter: str
    columns: list[str]
    rows: Iterator[tuple[int, dict[str, str]]]


class _Counted(io.RawIOBase):
    """A binary stream that fails the task once more than ``limit`` bytes were read."""

    def __init__(self, stream: BinaryIO, limit: int, name: str) -> None:
        self._stream = stream
        self._limit = limit
        self._name = name
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        self.count += len(data)
        if self.count > self._limit:
            raise TaskFailed(f"{self._name}: CSV is larger than the limit of {self._limit} bytes")
        buffer[: len(data)] = data
        return len(data)


class _Lines:
    """The text's physical lines for csv.reader, refusing a row longer than ``limit``
    characters before it is whole: reads stop at ``limit + 1`` characters of one row."""

    def __init__(self, text: io.TextIOBase, limit: int, name: str) -> None:
        self._text = text
        self._limit = limit
        self._name = name
        self._row_chars = 0
        self._row_line = 1
        self.line = 0  # physical lines read

    def start_row(self) -> None:
        self._row_chars = 0
        self._row_line = self.line + 1

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self._limit - self._row_chars + 1)
        if not line:
            raise StopIteration
        self.line += 1
        self._row_chars += len(line)
        if self._row_chars > self._limit:
            raise TaskFailed(
                f"{self._name}: line {self._row_line} starts a row longer than "
                f"{self._limit} characters"
            )
        return line


def read_table(
    stream: BinaryIO,
    name: str,
    limits: CsvLimits | None = None,
    delimiter: str | None = None,
) -> Table:
    """Open ``stream`` (UTF-8, with or without a BOM) as a table; TaskFailed on anything bad.

    ``delimiter`` None detects one of ``, ; tab |`` from the first 64 KiB.
    """
    limits = limits or CsvLimits()
    counted = io.BufferedReader(_Counted(stream, limits.max_bytes, name), SNIFF_BYTES)
    head = counted.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    if head.startswith(codecs.BOM_UTF8):
        counted.read(len(codecs.BOM_UTF8))
        head = head[len(codecs.BOM_UTF8) :]
    if not head.strip():
        raise TaskFailed(f"{name}: CSV is empty")
    if delimiter is None:
        delimiter = _sniff(head)
    elif len(delimiter) != 1:
        raise TaskFailed(f"{name}: delimiter must be one character")
    text = io.TextIOWrapper(counted, encoding="utf-8", errors="strict", newline="")
    lines = _Lines(text, limits.max_row_chars, name)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    header = _next(reader, lines, name, limits)
    while header is not None and _blank(header):
        header = _next(reader, lines, name, limits)
    if header is None:
        raise TaskFailed(f"{name}: CSV is empty")
    columns = [c.strip() for c in header]
    if len(columns) > limits.max_columns:
        raise TaskFailed(f"{name}: CSV has {len(columns)} columns, more than {limits.max_columns}")
    blank = [i + 1 for i, c in enumerate(columns) if not c]
    if blank:
        raise TaskFailed(f"{name}: header column {blank[0]} has no name")
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise TaskFailed(f"{name}: header names column {column!r} twice")
        seen.add(column)
    return Table(name, delimiter, columns, _rows(reader, lines, columns, name, limits))


def _sniff(head: bytes) -> str:
    # The header decides: the candidate that splits it into the most columns. (csv.Sniffer
    # looks for consistency across rows, so one ragged row makes it give up, and the ragged
    # row deserves its own message.)
    lines = head.decode("utf-8", errors="replace").splitlines()
    header = next((line for line in lines if line.strip()), "")
    widths = {d: len(next(csv.reader([header], delimiter=d), [])) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: widths[d])
    return best if widths[best] > 1 else ","


def _blank(row: list[str]) -> bool:
    # No delimiter (at most one field) and nothing but whitespace: an empty line.
    return len(row) <= 1 and not "".join(row).strip()


def _next(
    reader: Iterator[list[str]], lines: _Lines, name: str, limits: CsvLimits
) -> list[str] | None:
    lines.start_row()
    try:
        row = next(reader, None)
    except UnicodeDecodeError as exc:
        raise TaskFailed(f"{name}: CSV is not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        line = getattr(reader, "line_num", 0)
        raise TaskFailed(f"{name}: malformed CSV at line {line}: {exc}") from None
    if row is not None and any(len(v) > limits.max_field_chars for v in row):
        line = getattr(reader, "line_num", 0)
        raise TaskFailed(
            f"{name}: line {line} has a field longer than {limits.max_field_chars} characters"
        )
    return row


def _rows(
    reader: Iterator[list[str]], lines: _Lines, columns: list[str], name: str, limits: CsvLimits
) -> Iterator[tuple[int, dict[str, str]]]:
    count = 0
    while (row := _next(reader, lines, name, limits)) is not None:
        line = getattr(reader, "line_num", 0)
        if _blank(row):
            continue
        if len(row) != len(columns):
            raise TaskFailed(
                f"{name}: line {line} has {len(row)} fields, the header has {len(columns)}"
            )
        count += 1
        if count > limits.max_rows:
            raise TaskFailed(f"{name}: CSV has more than {limits.max_rows} rows")
        yield line, dict(zip(columns, row, strict=True))
