"""CSV tables: what real exports look like is read; what would lose data fails, bounded."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterator

import pytest

from ephemera.processors import TaskFailed
from ephemera.processors.documents.tables import CsvLimits, read_table


def rows(data: bytes, **kwargs: object) -> tuple[str, list[str], list[tuple[int, dict[str, str]]]]:
    table = read_table(io.BytesIO(data), "expected.csv", **kwargs)  # type: ignore[arg-type]
    return table.delimiter, table.columns, list(table.rows)


@pytest.mark.parametrize(
    ("data", "delimiter"),
    [
        (b"bol,carrier\nB1,ACME\n", ","),
        (b"\xef\xbb\xbfbol,carrier\nB1,ACME\n", ","),  # Excel's byte-order mark
        (b"bol;carrier\r\nB1;ACME\r\n", ";"),
        (b"bol\tcarrier\nB1\tACME\n", "\t"),
        (b"bol|carrier\nB1|ACME\n\n\n", "|"),  # trailing blank lines are not rows
    ],
)
def test_common_exports_read_the_same(data: bytes, delimiter: str) -> None:
    assert rows(data) == (delimiter, ["bol", "carrier"], [(2, {"bol": "B1", "carrier": "ACME"})])


def test_a_single_column_and_quoted_fields() -> None:
    assert rows(b"bol\nB1\n")[2] == [(2, {"bol": "B1"})]
    data = b'bol,note\nB1,"two\nlines, and a comma"\nB2,x\n'
    assert rows(data)[2] == [
        (3, {"bol": "B1", "note": "two\nlines, and a comma"}),
        (4, {"bol": "B2", "note": "x"}),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "expected.csv: CSV is empty"),
        (b"  \n\n", "expected.csv: CSV is empty"),
        (b"bol,carrier\nB1,ACME,extra\n", "expected.csv: line 2 has 3 fields, the header has 2"),
        (b"bol,carrier\nB1\n", "expected.csv: line 2 has 1 fields, the header has 2"),
        (b"bol,bol\nB1,B2\n", "expected.csv: header names column 'bol' twice"),
        (b"bol,,x\n1,2,3\n", "expected.csv: header column 2 has no name"),
        (b"bol,carrier\nB1,\xff\xfe\n", "expected.csv: CSV is not UTF-8 text (invalid start byte)"),
    ],
)
def test_what_would_lose_data_fails_naming_the_line(data: bytes, message: str) -> None:
    with pytest.raises(TaskFailed) as failed:
        rows(data)
    assert failed.value.message == message


def test_limits_stop_a_huge_csv_early_without_reading_it_whole() -> None:
    read = 0

    def endless() -> Iterator[bytes]:
        nonlocal read
        yield b"bol,carrier\n"
        for i in itertools.count():
            chunk = f"B{i},ACME\n".encode() * 1000
            read += len(chunk)
            yield chunk

    class Stream(io.RawIOBase):
        def __init__(self) -> None:
            self._chunks = endless()
            self._rest = b""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            if not self._rest:
                self._rest = next(self._chunks)
            n = min(len(buffer), len(self._rest))
            buffer[:n] = self._rest[:n]
            self._rest = self._rest[n:]
            return n

    table = read_table(Stream(), "huge.csv", CsvLimits(max_bytes=1024 * 1024, max_rows=10**9))  # type: ignore[arg-type]
    with pytest.raises(
        TaskFailed, match=r"huge\.csv: CSV is larger than the limit of 1048576 bytes"
    ):
        for _ in table.rows:
            pass
    assert read < 2 * 1024 * 1024

    table = read_table(Stream(), "huge.csv", CsvLimits(max_rows=10))  # type: ignore[arg-type]
    with pytest.raises(TaskFailed, match=r"huge\.csv: CSV has more than 10 rows"):
        list(table.rows)


def test_too_many_columns_and_too_long_fields_fail() -> None:
    with pytest.raises(TaskFailed, match="CSV has 3 columns, more than 2"):
        rows(b"a,b,c\n1,2,3\n", limits=CsvLimits(max_columns=2))
    with pytest.raises(TaskFailed, match="line 2 has a field longer than 4 characters"):
        rows(b"a,b\n1,12345\n", limits=CsvLimits(max_field_chars=4))


class Commas(io.RawIOBase):
    """``header`` then one line of ``size`` commas, made as it is read."""

    def __init__(self, header: bytes, size: int) -> None:
        self._head = header
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        n = min(len(buffer), self._left)
        buffer[:n] = b"," * n
        self._left -= n
        return n


@pytest.mark.parametrize(("header", "line"), [(b"a,b\n", 2), (b"", 1)], ids=["data-row", "header"])
def test_a_huge_line_is_refused_before_it_is_split_into_fields(header: bytes, line: int) -> None:
    """60 MB of commas on one line (under the byte limit) fails fast, naming the line: the
    csv module would build a list of 60 million fields before any check could count them."""
    started = time.monotonic()
    with pytest.raises(TaskFailed) as failed:
        list(read_table(Commas(header, 60_000_000), "wide.csv").rows)  # type: ignore[arg-type]
    assert failed.value.message == (
        f"wide.csv: line {line} starts a row longer than 1048576 characters"
    )
    assert time.monotonic() - started < 1


def test_a_row_is_bounded_across_the_lines_of_its_quoted_newlines() -> None:
    limits = CsvLimits(max_row_chars=20)
    within = b'a,b\n1,"' + b"x\n" * 7 + b'"\n2,y\n'  # row 2: 20 characters over 8 lines
    assert [line for line, _ in rows(within, limits=limits)[2]] == [9, 10]
    beyond = b'a,b\n1,y\n2,"' + b"x\n" * 8 + b'"\n'
    with pytest.raises(TaskFailed) as failed:
        rows(beyond, limits=limits)
    assert failed.value.message == "expected.csv: line 3 starts a row longer than 20 characters"


def test_a_row_of_empty_values_is_a_row_and_an_empty_line_is_not() -> None:
    """Delimiters alone, as many as the header's, are a row whose values are all empty (for
    pdf-form-fill, an empty form); a line without a delimiter is a blank line, skipped."""
    data = b"\n \nbol,carrier\n,\n\n   \nB1,ACME\n \t,  \n"
    assert rows(data)[1:] == (
        ["bol", "carrier"],
        [
            (4, {"bol": "", "carrier": ""}),
            (7, {"bol": "B1", "carrier": "ACME"}),
            (8, {"bol": " \t", "carrier": "  "}),
        ],
    )


def test_a_row_of_delimiters_alone_with_the_wrong_count_is_ragged() -> None:
    with pytest.raises(TaskFailed) as failed:
        rows(b"bol,carrier\nB1,ACME\n,,\n")
    assert failed.value.message == "expected.csv: line 3 has 3 fields, the header has 2"
