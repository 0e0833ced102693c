"""Uploads to S3 (moto over HTTP), request by request: one PutObject for a body of at most
one part; above that a multipart upload whose parts go up in parallel, in bounded memory, and
whose failure anywhere leaves nothing behind."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ephemera import Settings, Store
from ephemera.blobs import BlobStore
from ephemera.blobs.s3 import S3BlobStore
from ephemera.blobs.s3_requests import PART_SIZE
from ephemera.blobs.s3_writer import PARALLEL_PARTS, S3BlobWriter
from ephemera.errors import BlobNotFound, StorageError

if TYPE_CHECKING:
    from tests.s3server import S3Server

MiB = 1024 * 1024
KEY = "sessions/s/a"


class Requests:
    """The operation of every request the client sends, as it goes out (retries included)."""

    def __init__(self, blobs: BlobStore) -> None:
        assert isinstance(blobs, S3BlobStore)
        self.sent: list[str] = []
        blobs.client().meta.events.register("before-send.s3", self._sent)

    def _sent(self, event_name: str, **_: Any) -> None:
        self.sent.append(event_name.rsplit(".", 1)[-1])

    def take(self) -> list[str]:
        sent, self.sent = self.sent, []
        return sent


class SlowParts:
    """Each UploadPart waits ``delay`` before it goes out; counts how many wait at once."""

    def __init__(self, blobs: BlobStore, delay: float) -> None:
        assert isinstance(blobs, S3BlobStore)
        self.delay = delay
        self.most = 0
        self._now = 0
        self._lock = threading.Lock()
        blobs.client().meta.events.register("before-send.s3.UploadPart", self._slow)

    def _slow(self, **_: Any) -> None:
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
        time.sleep(self.delay)
        with self._lock:
            self._now -= 1


BLOCK = random.Random(0).randbytes(MiB)


def chunks(size: int) -> Iterator[bytes]:
    """``size`` bytes in MiB chunks, each one different (its number leads it), made cheaply:
    a writer fills parts faster than a slowed server takes them, even on a busy machine."""
    for n in range(0, size, MiB):
        yield (n.to_bytes(8, "big") + BLOCK[8:])[: size - n]


def digest(data: Iterator[bytes]) -> tuple[int, str]:
    hasher, size = hashlib.sha256(), 0
    for chunk in data:
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher.hexdigest()


def stored(blobs: BlobStore, key: str) -> tuple[int, str]:
    with blobs.open(key) as f:
        return digest(iter(lambda: f.read(MiB), b""))


@pytest.fixture
def bucket_url(s3_server: S3Server, s3_env: dict[str, str]) -> str:
    return s3_server.bucket_url()


@pytest.fixture
def blobs(bucket_url: str) -> S3BlobStore:
    return S3BlobStore.from_url(bucket_url)


@pytest.mark.parametrize("size", [0, 4096, PART_SIZE], ids=["empty", "4 KiB", "exactly one part"])
def test_a_body_of_at_most_one_part_is_one_put_object(blobs: S3BlobStore, size: int) -> None:
    requests = Requests(blobs)
    writer = blobs.writer(KEY)
    for chunk in chunks(size):
        writer.write(chunk)
    writer.sync()
    # Nothing went out yet: the body waits in memory for its commit, which puts it whole.
    assert requests.take() == []
    assert writer.commit().size == size
    assert requests.take() == ["PutObject"]
    assert stored(blobs, KEY) == digest(chunks(size))
    assert list(blobs.list_staged()) == []


def test_one_byte_over_a_part_is_a_multipart_upload_of_two_parts(blobs: S3BlobStore) -> None:
    requests = Requests(blobs)
    writer = blobs.writer(KEY)
    for chunk in chunks(PART_SIZE + 1):
        writer.write(chunk)
    writer.sync()
    assert requests.take() == ["CreateMultipartUpload", "UploadPart", "UploadPart"]
    assert writer.commit().size == PART_SIZE + 1
    assert requests.take() == ["CompleteMultipartUpload"]
    assert stored(blobs, KEY) == digest(chunks(PART_SIZE + 1))
    etag = blobs.client().head_object(Bucket=blobs.bucket, Key=KEY)["ETag"]
    assert etag.endswith('-2"')  # S3's mark of an object completed from two parts
    assert list(blobs.list_staged()) == []


def test_a_small_artifact_costs_the_store_one_request(tmp_path: Path, bucket_url: str) -> None:
    store = Store.open(Settings(data_dir=tmp_path / "data", blob_url=bucket_url))
    try:
        requests = Requests(store.blobs)
        session = store.create_session().session
        for n in range(3):
            store.put_artifact(session.id, random.randbytes(4096), name=f"{n}.bin")
        assert requests.take() == ["PutObject"] * 3
    finally:
        store.close()


def test_parts_go_up_in_parallel_and_the_object_is_exact(blobs: S3BlobStore) -> None:
    size = 9 * PART_SIZE + 1
    slow = SlowParts(blobs, delay=0.5)
    requests = Requests(blobs)
    writer = blobs.writer(KEY)
    for chunk in chunks(size):
        writer.write(chunk)
    stat = writer.commit()
    # In flight at once: more than one, never more than allowed (a loaded machine may not
    # hand a part over before an earlier one returns, so not always all of them).
    assert 1 < slow.most <= PARALLEL_PARTS
    assert requests.sent.count("UploadPart") == 10
    assert stat.size == size
    assert writer.sha256() == digest(chunks(size))[1]
    assert stored(blobs, KEY) == digest(chunks(size))
    assert list(blobs.list_staged()) == []


@pytest.mark.parametrize("parallel", [0, 2])
def test_a_writer_holds_at_most_one_part_more_than_it_has_in_flight(
    bucket_url: str, parallel: int
) -> None:
    blobs = S3BlobStore.from_url(bucket_url)
    blobs.parallel_parts = parallel
    SlowParts(blobs, delay=0.4)  # parts land slower than they fill: the bound is reached
    size = 4 * PART_SIZE + 1
    writer = blobs.writer(KEY)
    assert isinstance(writer, S3BlobWriter)
    most = 0
    for chunk in chunks(size):
        writer.write(chunk)
        most = max(most, writer.buffered)
    assert most == (parallel + 1) * PART_SIZE
    writer.commit()
    assert writer.buffered == 0
    assert stored(blobs, KEY) == digest(chunks(size))


def test_a_part_that_fails_aborts_the_whole_upload(blobs: S3BlobStore) -> None:
    def lose_part_3(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] == 3:
            params["Bucket"] = "no-such-bucket"  # the server refuses it: NoSuchBucket

    def slow_the_others(request: Any, **_: Any) -> None:
        if "no-such-bucket" not in request.url:
            time.sleep(0.5)  # so they are still on their way when part 3 fails

    events = blobs.client().meta.events
    events.register("before-parameter-build.s3.UploadPart", lose_part_3)
    events.register("before-send.s3.UploadPart", slow_the_others)
    requests = Requests(blobs)
    writer = blobs.writer(KEY)

    def upload() -> None:
        for chunk in chunks(8 * PART_SIZE):
            writer.write(chunk)
        writer.commit()

    with pytest.raises(StorageError, match=r"part 3 .*NoSuchBucket"):
        upload()
    # The abort came once the parts on their way had landed: none is left to go out after it
    # (a part that lands after an abort may be kept, out of any listing's sight).
    assert [t for t in threading.enumerate() if t.name.startswith("ephemera-s3-part")] == []
    sent = requests.take()
    assert sent.count("UploadPart") > 3  # parts after the third were on their way
    assert sent[-1] == "AbortMultipartUpload"
    assert list(blobs.list_staged()) == []
    with pytest.raises(BlobNotFound):
        blobs.stat(KEY)
    with pytest.raises(StorageError, match="after commit or abort"):
        writer.write(b"more")


def test_writes_after_a_sync_upload_the_synced_part_again_whole(blobs: S3BlobStore) -> None:
    writer = blobs.writer(KEY)
    writer.write(b"a" * (PART_SIZE + 3))
    writer.sync()  # part 2 holds 3 bytes, uploaded as they are
    (staged,) = blobs.list_staged()
    assert staged.size == PART_SIZE + 3
    writer.write(b"b" * PART_SIZE)  # part 2 again, now whole, and 3 bytes of part 3
    writer.sync()
    writer.write(b"c")
    writer.commit()
    with blobs.open(KEY) as f:
        assert f.read() == b"a" * (PART_SIZE + 3) + b"b" * PART_SIZE + b"c"
