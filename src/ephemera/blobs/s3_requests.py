"""How the S3 blob store calls S3: client errors translated into ours, bodies checksummed.

Shared by the store (``ephemera.blobs.s3``) and its resumable uploads
(``ephemera.blobs.s3_resumable``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError

from ephemera.errors import BlobNotFound, StorageError

PART_SIZE = 8 * 1024 * 1024  # S3's minimum is 5 MiB for every part but the last
MAX_PARTS = 10_000  # S3's limit: with PART_SIZE, a blob can be up to 78 GiB
MISSING = frozenset({"NoSuchKey", "NotFound", "404"})


def code_of(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def translated(
    action: str, *, missing: str | None = None, done: str | None = None
) -> Iterator[None]:
    """Client errors become ours here: none escapes this backend.

    ``missing``: the message of the BlobNotFound for a missing key. ``done``: the error code
    that means the operation has nothing left to do (it is then swallowed).
    """
    try:
        yield
    except ClientError as exc:
        code = code_of(exc)
        if code == done:
            return
        if missing is not None and code in MISSING:
            raise BlobNotFound(missing) from exc
        raise StorageError(f"{action}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"{action}: {exc}") from exc


def content_md5(data: bytes | bytearray | memoryview) -> str:
    # Content-MD5: the integrity check every S3-compatible server verifies.
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
