"""Blobs as objects in an S3-compatible bucket, each at ``{prefix}/{key}``.

Chosen by ``s3://BUCKET/optional/prefix?endpoint=URL&region=NAME``. Credentials (and the
endpoint and region, when the URL names none) come from boto3's usual chain: ``AWS_*``
variables, the config files, an instance role.

The client is boto3 because it covers the whole S3 API this store needs: multipart upload
streamed part by part, ranged GET, ListObjectsV2 (key order), DeleteObjects in batches of
1000, and ListMultipartUploads / AbortMultipartUpload for orphan reconciliation. Faster
clients made for the data path only (obstore) do not expose the last two, nor parts.

A body of at most one part (``PART_SIZE``) stays in the writer's memory and goes up as a
single PutObject when it is committed. A larger one becomes a multipart upload once its first
part is full: parts go up in the background, ``PARALLEL_PARTS`` at a time, while the next one
fills, so a writer holds at most ``PARALLEL_PARTS + 1`` parts in memory. Either way the object
appears whole at its key, or not at all, when the commit returns; a part that fails aborts
the whole upload (``ephemera.blobs.s3_writer``).

Staged bytes are the parts of uploads in progress: ``list_staged`` reports those uploads and
``delete_staged`` aborts them.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ephemera.blobs import KEY_RE, BlobStat, StagedBlob, check_key, s3_resumable
from ephemera.blobs.resumable import Pieces
from ephemera.blobs.s3_requests import MISSING, code_of, translated
from ephemera.blobs.s3_writer import PARALLEL_PARTS, S3BlobWriter
from ephemera.errors import InvalidInput, StorageError

DELETE_BATCH = 1000  # the most keys one DeleteObjects takes
# Connections kept open to the endpoint: as many as the HTTP server has worker threads
# (anyio's default), since requests and workers share one client. Parts in flight of many
# large uploads at once may need more: those connections are made, used, and not kept.
MAX_CONNECTIONS = 40

# The service models, parsed once per process rather than once per store (which costs a tenth
# of a second); the lock serializes making clients, as the loader is not made for threads.
_LOADER = botocore.loaders.create_loader()
_CLIENT_LOCK = threading.Lock()

_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
# Separates the key from the upload ID in a staged name; keys never contain it.
_STAGED_SEP = ":"


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    raise StorageError(f"unexpected timestamp {value!r} from S3")


class _ObjectReader(io.RawIOBase):
    """A response body as a raw stream whose read errors are ours."""

    def __init__(self, body: Any, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        with translated(f"cannot read blob {self._key}"):
            data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        with translated(f"cannot read blob {self._key}"):
            return bytes(self._body.read())

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(BotoCoreError, OSError):
                self._body.close()
        super().close()


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        parallel_parts: int = PARALLEL_PARTS,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.parallel_parts = parallel_parts  # per writer; 0: one at a time, in its thread
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._client: Any = None
        # Clients that presign URLs, by the endpoint they sign for.
        self._signers: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not _BUCKET_RE.fullmatch(parts.netloc):
            raise InvalidInput("S3 blob store URL must be s3://BUCKET/optional/prefix")
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"endpoint", "region"})
        if unknown or any(len(values) > 1 for values in query.values()):
            raise InvalidInput("S3 blob store URL takes one endpoint= and one region= at most")
        endpoint = query.get("endpoint", [None])[0]
        region = query.get("region", [None])[0]
        return cls(parts.netloc, parts.path, endpoint, region)

    def client(self) -> Any:
        """The boto3 client, made on first use: opening a store does no I/O.

        Clients are thread-safe, so all threads share one; the session that makes it is not,
        hence the lock.
        """
        client = self._client
        if client is None:
            with _CLIENT_LOCK:
                if self._client is None:
                    self._client = self._make_client()
                client = self._client
        return client

    def presigned_get(
        self,
        key: str,
        expires_in_s: int,
        *,
        content_type: str,
        content_disposition: str,
        endpoint_url: str | None = None,
    ) -> str:
        """A presigned GetObject URL; the answer carries these type and disposition headers.

        A signature covers the host, so a URL for clients that reach the store under another
        name (``endpoint_url``) is signed by a client made for that name."""
        params = {
            "Bucket": self.bucket,
            "Key": self.object_key(key),
            "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition,
        }
        with translated(f"cannot sign a URL for blob {key}"):
            return str(
                self._signer(endpoint_url).generate_presigned_url(
                    "get_object", Params=params, ExpiresIn=expires_in_s
                )
            )

    def _signer(self, endpoint_url: str | None) -> Any:
        endpoint_url = endpoint_url or self.endpoint_url
        with _CLIENT_LOCK:
            signer = self._signers.get(endpoint_url or "")
            if signer is None:
                signer = self._make_client(endpoint_url, signature_version="s3v4")
                self._signers[endpoint_url or ""] = signer
        return signer

    def _make_client(
        self, endpoint_url: str | None = None, signature_version: str | None = None
    ) -> Any:
        endpoint_url = endpoint_url or self.endpoint_url
        options: dict[str, Any] = {
            "max_pool_connections": MAX_CONNECTIONS,
            # Flexible checksums only where the API requires them: S3-compatible servers
            # vary in their support, and every part carries a Content-MD5 anyway.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        if endpoint_url:
            # Self-hosted servers rarely resolve bucket subdomains of their endpoint.
            options["s3"] = {"addressing_style": "path"}
        if signature_version:
            # Presigned URLs would otherwise be SigV2 in some regions: SigV4 bounds their
            # life (X-Amz-Expires) and is the one every S3-compatible server takes.
            options["signature_version"] = signature_version
        try:
            session = botocore.session.Session()
            session.register_component("data_loader", _LOADER)
            return boto3.session.Session(botocore_session=session).client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=self.region,
                config=Config(**options),
            )
        except (BotoCoreError, ValueError) as exc:
            raise StorageError(f"cannot set up the S3 client: {exc}") from exc

    def object_key(self, key: str) -> str:
        return self._root + check_key(key)

    def _relative(self, object_key: str) -> str:
        return object_key[len(self._root) :]

    def writer(self, key: str) -> S3BlobWriter:
        return S3BlobWriter(self, check_key(key))

    def open(self, key: str) -> BinaryIO:
        return self._get(key, {})

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        """Bytes ``start`` to ``end`` inclusive, as in HTTP's Range; ``end`` may pass the end."""
        if not 0 <= start <= end:
            raise InvalidInput(f"invalid byte range {start}-{end}")
        return self._get(key, {"Range": f"bytes={start}-{end}"})

    def _get(self, key: str, options: dict[str, str]) -> BinaryIO:
        object_key = self.object_key(key)
        with translated(f"cannot open blob {key}", missing=f"no blob at {key}"):
            response = self.client().get_object(Bucket=self.bucket, Key=object_key, **options)
        return io.BufferedReader(_ObjectReader(response["Body"], key))

    def stat(self, key: str) -> BlobStat:
        object_key = self.object_key(key)
        with translated(f"cannot stat blob {key}", missing=f"no blob at {key}"):
            head = self.client().head_object(Bucket=self.bucket, Key=object_key)
        return BlobStat(key, int(head["ContentLength"]), _utc(head["LastModified"]))

    def delete(self, key: str) -> None:
        object_key = self.object_key(key)
        with translated(f"cannot delete blob {key}"):
            self.client().delete_object(Bucket=self.bucket, Key=object_key)

    def delete_many(self, keys: Sequence[str]) -> dict[str, str]:
        """One DeleteObjects per 1000 keys; a batch that fails as a whole fails all its keys."""
        object_keys = [self.object_key(key) for key in dict.fromkeys(keys)]
        failed: dict[str, str] = {}
        for i in range(0, len(object_keys), DELETE_BATCH):
            batch = object_keys[i : i + DELETE_BATCH]
            try:
                with translated("cannot delete blobs"):
                    errors = self._delete_objects(batch)
            except StorageError as exc:
                failed.update({self._relative(k): exc.message for k in batch})
                continue
            failed.update({self._relative(k): reason for k, reason in errors.items()})
        return failed

    def _delete_objects(self, object_keys: list[str]) -> dict[str, str]:
        response = self.client().delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": k} for k in object_keys], "Quiet": True},
        )
        return {
            str(e["Key"]): str(e.get("Code") or e.get("Message"))
            for e in response.get("Errors", [])
            if e.get("Code") not in MISSING  # gone already: deleted
        }

    def delete_prefix(self, prefix: str) -> int:
        """Delete what is listed under the prefix, a page (1000 keys) at a time.

        Unlike a rename this is not atomic: two callers at once may both count a blob, and
        a blob written meanwhile may survive.
        """
        base = check_key(prefix.rstrip("/"))
        count = 0
        for page in self._pages(self._root + base + "/"):
            batch = [str(obj["Key"]) for obj in page.get("Contents", [])]
            if not batch:
                continue
            with translated(f"cannot delete {prefix}"):
                errors = self._delete_objects(batch)
            if errors:
                key, reason = next(iter(errors.items()))
                raise StorageError(f"cannot delete {self._relative(key)}: {reason}")
            count += len(batch)
        return count

    def list(self, prefix: str = "") -> Iterator[BlobStat]:
        """Keys in ascending order, under ``prefix`` taken as a path, as the local store does.

        Objects whose names are not blob keys (in a bucket shared with other data) are not
        ours, and left out.
        """
        base = prefix.rstrip("/")
        if not base:
            yield from self._list_under(self._root)
            return
        check_key(base)
        if not prefix.endswith("/"):
            # ``base`` may be a blob itself: it sorts first of all keys that start with it.
            with translated(f"cannot list {base}"):
                first = self.client().list_objects_v2(
                    Bucket=self.bucket, Prefix=self._root + base, MaxKeys=1
                )
            yield from (stat for stat in self._stats(first) if stat.key == base)
        yield from self._list_under(self._root + base + "/")

    def _list_under(self, object_prefix: str) -> Iterator[BlobStat]:
        for page in self._pages(object_prefix):
            yield from self._stats(page)

    def _stats(self, page: dict[str, Any]) -> Iterator[BlobStat]:
        for obj in page.get("Contents", []):
            key = self._relative(str(obj["Key"]))
            if KEY_RE.fullmatch(key):
                yield BlobStat(key, int(obj["Size"]), _utc(obj["LastModified"]))

    def _pages(self, object_prefix: str, **options: Any) -> Iterator[dict[str, Any]]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=object_prefix, **options)
        )
        with translated(f"cannot list {self._relative(object_prefix) or 'blobs'}"):
            yield from pages

    def list_children(self, prefix: str, after: str | None = None) -> Iterator[str]:
        """Names one level under ``prefix``, ascending, whether blobs or deeper prefixes.

        Collected and sorted before any is yielded, as the local store lists a folder: S3
        orders ``a-b/`` before ``a/``, names do not. After ``after``, the listing starts at
        the key ``after`` itself: every name greater than it has a greater key (``a-b/``
        too), so only pages from there on are read.
        """
        object_prefix = self._root + check_key(prefix.rstrip("/")) + "/"
        options: dict[str, Any] = {"Delimiter": "/"}
        if after is not None:
            options["StartAfter"] = object_prefix + after
        names: set[str] = set()
        for page in self._pages(object_prefix, **options):
            for common in page.get("CommonPrefixes", []):
                names.add(str(common["Prefix"])[len(object_prefix) :].rstrip("/"))
            for obj in page.get("Contents", []):
                names.add(str(obj["Key"])[len(object_prefix) :])
        if after is not None:
            names = {name for name in names if name > after}
        yield from sorted(name for name in names if _NAME_RE.fullmatch(name))

    def list_staged(self) -> Iterator[StagedBlob]:
        """Multipart uploads in progress, named ``{key}:{upload ID}``.

        The size counts the parts uploaded so far: a writer alive elsewhere may hold up to
        one more part in memory (which a crash loses, leaving nothing to remove). The time is
        that of the upload's last part, or of its start if it has none: like a staging file's
        mtime, the last sign of life, so a slow upload still in flight is not taken for an
        orphan.
        """
        pages = (
            self.client()
            .get_paginator("list_multipart_uploads")
            .paginate(Bucket=self.bucket, Prefix=self._root)
        )
        with translated("cannot list staged uploads"):
            for page in pages:
                for upload in page.get("Uploads", []):
                    object_key = str(upload["Key"])
                    key = self._relative(object_key)
                    if not object_key.startswith(self._root) or not KEY_RE.fullmatch(key):
                        continue
                    upload_id = str(upload["UploadId"])
                    parts = self._parts(object_key, upload_id)
                    if parts is None:
                        continue  # completed or aborted since it was listed
                    touched = max([_utc(upload["Initiated"]), *(p[1] for p in parts)])
                    name = f"{key}{_STAGED_SEP}{upload_id}"
                    yield StagedBlob(name, sum(p[0] for p in parts), touched)
        # Resumable uploads' tail objects: staged bytes too, named by their key.
        for stat in self.list(f"{s3_resumable.UPLOADS}/"):
            yield StagedBlob(stat.key, stat.size, stat.modified_at)

    def _parts(self, object_key: str, upload_id: str) -> Sequence[tuple[int, datetime]] | None:
        """Size and time of each part uploaded, or None if the upload is gone."""
        pages = (
            self.client()
            .get_paginator("list_parts")
            .paginate(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
        )
        try:
            return [
                (int(part["Size"]), _utc(part["LastModified"]))
                for page in pages
                for part in page.get("Parts", [])
            ]
        except ClientError as exc:
            if code_of(exc) == "NoSuchUpload":
                return None
            raise

    def delete_staged(self, name: str) -> None:
        if name.startswith(f"{s3_resumable.UPLOADS}/") and KEY_RE.fullmatch(name):
            self.delete(name)  # a resumable upload's tail object
            return
        key, sep, upload_id = name.partition(_STAGED_SEP)
        if not sep or not upload_id or not KEY_RE.fullmatch(key):
            raise StorageError(f"invalid staging name {name!r}")
        with translated(f"cannot delete staged {name}", done="NoSuchUpload"):
            self.client().abort_multipart_upload(
                Bucket=self.bucket, Key=self._root + key, UploadId=upload_id
            )

    # -- resumable uploads (ephemera.blobs.s3_resumable) ----------------------------------------

    def append_to(
        self,
        upload_id: str,
        key: str,
        pieces: Pieces,
        offset: int,
        continue_last: bool,
        reserve: Callable[[], int],
    ) -> s3_resumable.S3PieceWriter:
        # Parts are never extended: a clean or a taken-over claim starts alike.
        return s3_resumable.S3PieceWriter(self, upload_id, check_key(key), pieces, offset, reserve)

    def assemble(
        self, upload_id: str, pieces: Pieces, length: int, key: str
    ) -> s3_resumable.S3Assembled:
        return s3_resumable.assemble(self, upload_id, pieces, length, check_key(key))

    def discard_upload(self, upload_id: str, pieces: Pieces) -> None:
        s3_resumable.discard(self, check_key(upload_id), pieces)

    def upload_of_staged(self, name: str) -> str | None:
        key = name.partition(_STAGED_SEP)[0]
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == s3_resumable.UPLOADS:
            return parts[1]  # a tail object
        return parts[-1] if len(parts) == 3 and parts[0] == "sessions" else None

    def create_container(self) -> None:
        options: dict[str, Any] = {}
        if self.region and self.region != "us-east-1":
            # us-east-1 is the one region that refuses to be named here.
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with translated(f"cannot create S3 bucket {self.bucket}", done="BucketAlreadyOwnedByYou"):
            self.client().create_bucket(Bucket=self.bucket, **options)

    def check(self) -> None:
        """One HeadBucket: the bucket exists and these credentials reach it (readiness probes
        call this often, so it writes nothing)."""
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            # HEAD answers carry no error body: a missing bucket is a bare 404.
            code = code_of(exc)
            if code in ("404", "NotFound", "NoSuchBucket"):
                raise StorageError(
                    f"S3 bucket {self.bucket} does not exist: create it, or set "
                    "EPHEMERA_CREATE_BUCKET=true to have ephemera create it"
                ) from exc
            raise StorageError(f"S3 bucket {self.bucket} is not usable: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 bucket {self.bucket} is not usable: {exc}") from exc
