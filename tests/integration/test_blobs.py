"""The BlobStore contract: every backend runs this whole suite through its `blobs` fixture."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ephemera.blobs import BlobStore, CreatesContainer, open_blob_store, s3
from ephemera.blobs.local import LocalBlobStore
from ephemera.blobs.s3 import S3BlobStore
from ephemera.blobs.s3_requests import PART_SIZE
from ephemera.errors import BlobNotFound, InvalidInput, StorageError
from ephemera.testing import MemoryBlobStore
from tests.conftest import free_port

if TYPE_CHECKING:
    from tests.s3server import S3Server


MiB = 1024 * 1024
# Over one part: S3 puts a body of one part or less whole at its commit, staging nothing.
STAGED_BODY = b"abc" * (PART_SIZE // 3 + 1)


def put(blobs: BlobStore, key: str, data: bytes) -> None:
    writer = blobs.writer(key)
    writer.write(data)
    writer.commit()


class BlobStoreContract:
    def test_committed_bytes_read_back_exactly_with_size_and_hash(self, blobs: BlobStore) -> None:
        writer = blobs.writer("sessions/s/a")
        for chunk in (b"abc", b"", b"def" * 1000):
            writer.write(chunk)
        data = b"abc" + b"def" * 1000
        assert writer.size == len(data)
        assert writer.sha256() == hashlib.sha256(data).hexdigest()
        stat = writer.commit()
        assert (stat.key, stat.size) == ("sessions/s/a", len(data))
        with blobs.open("sessions/s/a") as f:
            assert f.read() == data
        assert blobs.stat("sessions/s/a").size == len(data)

    def test_nothing_is_visible_before_commit(self, blobs: BlobStore) -> None:
        writer = blobs.writer("sessions/s/a")
        writer.write(STAGED_BODY)
        # Staged bytes are those synced: until then an S3 writer may hold them (a few parts)
        # in its own memory, where no listing sees them and a crash leaves nothing behind.
        writer.sync()
        with pytest.raises(BlobNotFound):
            blobs.stat("sessions/s/a")
        with pytest.raises(BlobNotFound):
            blobs.open("sessions/s/a")
        assert list(blobs.list()) == []
        assert [s.size for s in blobs.list_staged()] == [len(STAGED_BODY)]
        writer.abort()
        assert list(blobs.list_staged()) == []

    def test_abort_is_idempotent_and_harmless_after_commit(self, blobs: BlobStore) -> None:
        writer = blobs.writer("sessions/s/a")
        writer.write(b"abc")
        writer.commit()
        writer.abort()
        writer.abort()
        assert blobs.stat("sessions/s/a").size == 3

    def test_missing_blobs_raise_blob_not_found(self, blobs: BlobStore) -> None:
        with pytest.raises(BlobNotFound):
            blobs.open("sessions/s/missing")
        with pytest.raises(FileNotFoundError):  # BlobNotFound is a FileNotFoundError too
            blobs.stat("sessions/s/missing")

    def test_deleting_what_is_gone_succeeds(self, blobs: BlobStore) -> None:
        put(blobs, "sessions/s/a", b"x")
        blobs.delete("sessions/s/a")
        blobs.delete("sessions/s/a")
        with pytest.raises(BlobNotFound):
            blobs.stat("sessions/s/a")

    def test_delete_many_removes_each_key_and_ignores_the_gone(self, blobs: BlobStore) -> None:
        for key in ("sessions/a/1", "sessions/a/2", "sessions/b/1", "sessions/b/2"):
            put(blobs, key, b"x")
        failed = blobs.delete_many(["sessions/b/1", "sessions/a/2", "sessions/a/9", "sessions/z/1"])
        assert failed == {}
        assert [b.key for b in blobs.list()] == ["sessions/a/1", "sessions/b/2"]
        with pytest.raises(InvalidInput):
            blobs.delete_many(["../etc/passwd"])

    def test_delete_prefix_removes_one_session_only(self, blobs: BlobStore) -> None:
        for key in ("sessions/s1/a", "sessions/s1/b", "sessions/s10/a", "sessions/s2/a"):
            put(blobs, key, b"x")
        assert blobs.delete_prefix("sessions/s1/") == 2
        assert blobs.delete_prefix("sessions/s1/") == 0
        assert [b.key for b in blobs.list()] == ["sessions/s10/a", "sessions/s2/a"]

    def test_list_is_in_key_order_under_a_prefix(self, blobs: BlobStore) -> None:
        keys = ["sessions/b/2", "sessions/a/9", "sessions/b/10", "sessions/a/1"]
        for key in keys:
            put(blobs, key, b"x")
        assert [b.key for b in blobs.list()] == sorted(keys)
        assert [b.key for b in blobs.list("sessions/b/")] == ["sessions/b/10", "sessions/b/2"]

    def test_children_after_a_name_are_the_greater_names(self, blobs: BlobStore) -> None:
        # As S3 keys ``a-b/`` sorts before ``a/``: a listing after ``a`` must keep it.
        for key in ("sessions/a-b/x", "sessions/a/y", "sessions/a/x", "sessions/f/z", "sessions/0"):
            put(blobs, key, b"x")
        assert list(blobs.list_children("sessions/")) == ["0", "a", "a-b", "f"]
        assert list(blobs.list_children("sessions/", after="a")) == ["a-b", "f"]
        assert list(blobs.list_children("sessions/", after="0")) == ["a", "a-b", "f"]
        assert list(blobs.list_children("sessions/", after="a-b")) == ["f"]
        assert list(blobs.list_children("sessions/", after="f")) == []

    @pytest.mark.parametrize("key", ["../x", "sessions/../x", "/abs", "a//b", "a/.b", "", "a b"])
    def test_hostile_keys_are_refused(self, blobs: BlobStore, key: str) -> None:
        with pytest.raises(InvalidInput):
            blobs.writer(key)
        with pytest.raises(InvalidInput):
            blobs.delete(key)

    def test_staged_leftovers_can_be_removed(self, blobs: BlobStore) -> None:
        writer = blobs.writer("sessions/s/a")
        writer.write(STAGED_BODY)
        writer.sync()  # staged where list_staged can see it (see above)
        (staged,) = blobs.list_staged()
        blobs.delete_staged(staged.name)
        blobs.delete_staged(staged.name)
        assert list(blobs.list_staged()) == []
        writer.abort()  # the writer of a removed staging file still closes cleanly


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> BlobStore:
        return LocalBlobStore(tmp_path / "blobs")

    def test_the_constructor_does_no_io(self, tmp_path: Path) -> None:
        LocalBlobStore(tmp_path / "blobs")
        assert not (tmp_path / "blobs").exists()

    def test_commit_is_a_rename_within_one_filesystem(self, tmp_path: Path) -> None:
        blobs = LocalBlobStore(tmp_path / "blobs")
        writer = blobs.writer("sessions/s/a")
        writer.write(b"abc")
        (staged,) = blobs.list_staged()
        inode = (tmp_path / "blobs" / "staging" / staged.name).stat().st_ino
        writer.commit()
        assert (tmp_path / "blobs" / "sessions" / "s" / "a").stat().st_ino == inode


class TestMemoryBlobStore(BlobStoreContract):
    @pytest.fixture
    def blobs(self) -> BlobStore:
        return MemoryBlobStore()


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture(params=["", "tenant/blobs"], ids=["bucket", "prefix"])
    def blobs(
        self, request: pytest.FixtureRequest, s3_server: S3Server, s3_env: dict[str, str]
    ) -> BlobStore:
        return open_blob_store(s3_server.bucket_url(request.param))

    def test_a_body_of_many_parts_reads_back_across_its_parts(self, blobs: BlobStore) -> None:
        # How its parts go up (requests, parallelism, memory): tests/integration/test_s3_writer.py
        chunks = [random.randbytes(MiB) for _ in range(20)]
        writer = blobs.writer("sessions/s/big")
        for chunk in chunks:
            writer.write(chunk)
        writer.sync()
        assert [s.size for s in blobs.list_staged()] == [20 * MiB]
        data = b"".join(chunks)
        assert writer.sha256() == hashlib.sha256(data).hexdigest()
        assert writer.commit().size == len(data)
        assert list(blobs.list_staged()) == []
        assert blobs.stat("sessions/s/big").size == len(data)
        with blobs.open("sessions/s/big") as f:
            assert f.read(1) == data[:1]
            assert f.read(3 * MiB) == data[1 : 3 * MiB + 1]
            assert f.read() == data[3 * MiB + 1 :]
        assert isinstance(blobs, S3BlobStore)
        with blobs.open_range("sessions/s/big", PART_SIZE - 5, PART_SIZE + 4) as f:
            assert f.read() == data[PART_SIZE - 5 : PART_SIZE + 5]

    def test_open_range_reads_exactly_the_range(self, blobs: BlobStore) -> None:
        assert isinstance(blobs, S3BlobStore)
        data = bytes(range(100))
        put(blobs, "sessions/s/a", data)
        with blobs.open_range("sessions/s/a", 10, 19) as f:
            assert f.read() == data[10:20]
        with blobs.open_range("sessions/s/a", 0, 0) as f:
            assert f.read() == data[:1]
        with blobs.open_range("sessions/s/a", 90, 1000) as f:  # clipped, as in HTTP
            assert f.read() == data[90:]
        # Callers clamp ranges to the recorded size: one past the stored bytes means the
        # bytes and the record disagree, a storage fault, not the client's.
        with pytest.raises(StorageError, match="InvalidRange"):
            blobs.open_range("sessions/s/a", 100, 200)
        with pytest.raises(InvalidInput):
            blobs.open_range("sessions/s/a", 5, 4)
        with pytest.raises(BlobNotFound):
            blobs.open_range("sessions/s/missing", 0, 9)

    def test_an_upload_never_committed_is_staged_until_removed(self, blobs: BlobStore) -> None:
        unsynced = blobs.writer("sessions/s/small")
        unsynced.write(b"abc")
        unsynced.sync()  # at most one part: in memory until its commit, nothing to reconcile
        writer = blobs.writer("sessions/s/a")
        writer.write(b"x" * (PART_SIZE + 1))
        writer.sync()
        writer.write(b"y")
        (staged,) = blobs.list_staged()
        # Counts the synced parts only; the byte still in the writer's memory is not there.
        assert staged.size == PART_SIZE + 1
        assert staged.name.startswith("sessions/s/a:")
        # The last part's time (moto reports a fixed start time for every upload).
        assert abs((datetime.now(UTC) - staged.modified_at).total_seconds()) < 60
        blobs.delete_staged(staged.name)
        blobs.delete_staged(staged.name)
        assert list(blobs.list_staged()) == []
        with pytest.raises(StorageError):
            writer.commit()
        with pytest.raises(BlobNotFound):
            blobs.stat("sessions/s/a")
        with pytest.raises(StorageError):
            blobs.delete_staged("sessions/s/a")  # not a staged name

    def test_delete_many_goes_in_batches(
        self, blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(s3, "DELETE_BATCH", 2)
        keys = [f"sessions/s/{i}" for i in range(5)]
        for key in keys:
            put(blobs, key, b"x")
        assert blobs.delete_many([*keys[:4], keys[0], "sessions/s/gone"]) == {}
        assert [b.key for b in blobs.list()] == ["sessions/s/4"]
        assert blobs.delete_prefix("sessions/s/") == 1

    def test_children_and_listings_follow_paths_like_the_local_store(
        self, blobs: BlobStore
    ) -> None:
        for key in ("sessions/a-b/x", "sessions/a/y", "sessions/a/x", "sessions/f", "sessions2/z"):
            put(blobs, key, b"x")
        assert list(blobs.list_children("sessions/")) == ["a", "a-b", "f"]
        assert list(blobs.list_children("sessions/a")) == ["x", "y"]
        assert list(blobs.list_children("sessions/missing/")) == []
        assert [b.key for b in blobs.list("sessions/a")] == ["sessions/a/x", "sessions/a/y"]
        assert [b.key for b in blobs.list("sessions/f")] == ["sessions/f"]
        assert [b.key for b in blobs.list("sessions/")] == [
            "sessions/a-b/x",
            "sessions/a/x",
            "sessions/a/y",
            "sessions/f",
        ]

    def test_objects_not_of_this_store_are_not_listed(
        self, s3_server: S3Server, s3_env: dict[str, str]
    ) -> None:
        url = s3_server.bucket_url("one")
        blobs = S3BlobStore.from_url(url)
        sibling = S3BlobStore.from_url(url.replace("/one?", "/one-two?"))
        put(blobs, "sessions/s/a", b"x")
        put(sibling, "sessions/s/b", b"x")
        sibling.writer("sessions/s/c").sync()
        blobs.client().put_object(Bucket=blobs.bucket, Key="one/sessions/s/.hidden", Body=b"")
        assert [b.key for b in blobs.list()] == ["sessions/s/a"]
        assert list(blobs.list_children("sessions/s")) == ["a"]
        assert list(blobs.list_staged()) == []
        blobs.check()
        assert [b.key for b in blobs.list()] == ["sessions/s/a"]  # no probe left behind

    def test_the_constructor_does_no_io(
        self, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        url = f"s3://bucket/p?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
        blobs = open_blob_store(url)
        for use in (blobs.check, lambda: blobs.stat("sessions/s/a"), lambda: list(blobs.list())):
            with pytest.raises(StorageError) as caught:
                use()
            assert not isinstance(caught.value, BlobNotFound)

    def test_create_container_makes_a_missing_bucket_once(
        self, s3_server: S3Server, s3_env: dict[str, str]
    ) -> None:
        url = s3_server.bucket_url().replace("s3://test-", "s3://made-")
        blobs = open_blob_store(url)
        assert isinstance(blobs, CreatesContainer)
        with pytest.raises(StorageError):
            blobs.check()
        blobs.create_container()
        blobs.check()
        blobs.create_container()  # already there: success

    def test_a_missing_bucket_is_a_storage_error(
        self, s3_server: S3Server, s3_env: dict[str, str]
    ) -> None:
        url = s3_server.bucket_url().replace("s3://test-", "s3://missing-")
        blobs = open_blob_store(url)
        with pytest.raises(StorageError, match=r"does not exist: .*EPHEMERA_CREATE_BUCKET=true"):
            blobs.check()
        with pytest.raises(StorageError) as caught:
            blobs.open("sessions/s/a")
        assert not isinstance(caught.value, BlobNotFound)

    @pytest.mark.parametrize(
        "url",
        [
            "s3://",
            "s3://user@bucket/p",
            "s3://bucket?endpoint=a&endpoint=b",
            "s3://bucket?profile=x",
        ],
    )
    def test_bad_urls_are_refused(self, url: str) -> None:
        with pytest.raises(InvalidInput):
            open_blob_store(url)

    def test_the_url_names_bucket_prefix_endpoint_and_region(self) -> None:
        blobs = open_blob_store("s3://b/one/two/?endpoint=http://h:9000&region=eu-west-1")
        assert isinstance(blobs, S3BlobStore)
        assert (blobs.bucket, blobs.prefix) == ("b", "one/two")
        assert (blobs.endpoint_url, blobs.region) == ("http://h:9000", "eu-west-1")
        assert blobs.object_key("sessions/s/a") == "one/two/sessions/s/a"
        assert S3BlobStore.from_url("s3://b").object_key("sessions/s/a") == "sessions/s/a"
