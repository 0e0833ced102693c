"""The BlobStore contract: every backend runs this whole suite through its `blobs` fixture."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ephemera.blobs import BlobStore
from ephemera.blobs.local import LocalBlobStore
from ephemera.errors import BlobNotFound, InvalidInput
from ephemera.testing import MemoryBlobStore


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
        writer.write(b"abc")
        with pytest.raises(BlobNotFound):
            blobs.stat("sessions/s/a")
        with pytest.raises(BlobNotFound):
            blobs.open("sessions/s/a")
        assert list(blobs.list()) == []
        assert [s.size for s in blobs.list_staged()] == [3]
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

    @pytest.mark.parametrize("key", ["../x", "sessions/../x", "/abs", "a//b", "a/.b", "", "a b"])
    def test_hostile_keys_are_refused(self, blobs: BlobStore, key: str) -> None:
        with pytest.raises(InvalidInput):
            blobs.writer(key)
        with pytest.raises(InvalidInput):
            blobs.delete(key)

    def test_staged_leftovers_can_be_removed(self, blobs: BlobStore) -> None:
        writer = blobs.writer("sessions/s/a")
        writer.write(b"abc")
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
