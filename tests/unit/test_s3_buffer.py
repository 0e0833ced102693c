"""A part's bytes in a mapping of their own, and the file botocore reads them from."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ephemera.blobs.s3_buffer import BLOCK, COPIED_BODY, PartBody, PartBuffer

MiB = 1024 * 1024


# A size no other mapping of the process has: its mappings are the buffers' own. (An
# anonymous mmap is shared by default, an object of its own: never merged with a neighbour.)
ODD = 37 * MiB + 3 * 4096


def mappings_of(size: int) -> int:
    """How many mappings of exactly ``size`` bytes the process has."""
    count = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        count += end - start == size
    return count


def test_a_buffer_takes_what_fits_and_hands_back_the_rest() -> None:
    part = PartBuffer(10)
    rest = part.fill(memoryview(b"abcdef"))
    assert (len(part), bytes(rest), part.full) == (6, b"", False)
    rest = part.fill(memoryview(b"ghijkl"))
    assert (len(part), bytes(rest), part.full) == (10, b"kl", True)
    assert bytes(part.view()) == b"abcdefghij"
    part.clear()
    part.fill(memoryview(b"xy"))
    assert bytes(part.view()) == b"xy"
    part.close()
    assert len(part) == 0


def test_a_closed_buffer_gives_its_mapping_back() -> None:
    before = mappings_of(ODD)
    parts = [PartBuffer(ODD) for _ in range(4)]
    for part in parts:
        part.fill(memoryview(b"x" * MiB))
    assert mappings_of(ODD) == before + 4
    for part in parts:
        part.close()
    assert mappings_of(ODD) == before


def test_a_mapping_still_read_is_given_back_when_its_last_reader_goes() -> None:
    before = mappings_of(ODD)
    part = PartBuffer(ODD)
    part.fill(memoryview(b"x" * MiB))
    held = part.view()
    part.close()  # a view is still out: no error, the mapping stays readable for it
    assert bytes(held[:3]) == b"xxx"
    assert mappings_of(ODD) == before + 1
    held.release()
    del part
    assert mappings_of(ODD) == before


def test_a_few_bytes_go_as_bytes_and_more_as_a_file_of_known_length() -> None:
    small = PartBuffer(MiB)
    small.fill(memoryview(b"s" * COPIED_BODY))
    with small.body() as body:
        assert body == b"s" * COPIED_BODY
    large = PartBuffer(MiB)
    large.fill(memoryview(bytes(range(256)) * (COPIED_BODY // 256 + 1)))
    with large.body() as body:
        assert isinstance(body, PartBody)
        assert len(body) == len(large)
        assert body.read() == bytes(large.view())
    assert body.closed


def test_a_body_reads_in_blocks_seeks_and_reads_again_as_botocore_does() -> None:
    data = bytes(range(256)) * (3 * BLOCK // 256 + 7)
    body = PartBody(memoryview(data))
    assert body.seekable()
    assert body.readable()
    # Asked for more than a block, a read gives a block: a raw file may give fewer bytes.
    assert body.read(MiB) == data[:BLOCK]
    assert body.tell() == BLOCK
    assert body.read(10) == data[BLOCK : BLOCK + 10]
    assert body.seek(0, io.SEEK_END) == len(data)
    assert body.read(10) == b""
    assert body.seek(-5, io.SEEK_END) == len(data) - 5
    assert body.read() == data[-5:]
    body.seek(0)
    chunks = iter(lambda: body.read(MiB), b"")  # how botocore reads a body to sign it
    assert b"".join(chunks) == data
    body.seek(7)
    into = bytearray(20)
    assert body.readinto(into) == 20
    assert bytes(into) == data[7:27]
    with pytest.raises(ValueError, match="negative seek"):
        body.seek(-1)
    body.close()
    with pytest.raises(ValueError, match="released memoryview"):
        body.read(1)
