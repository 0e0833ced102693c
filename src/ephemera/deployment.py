"""The record of which backends a data dir's deployment uses.

``ephemera serve`` and ``ephemera migrate`` write it; every other command compares the
backends it resolved with it before touching anything. Without it a cron job on a PostgreSQL
deployment that lost ``EPHEMERA_DATABASE_URL`` would open the SQLite default in the data dir
and report success forever; ``ephemera migrate`` refuses them too. Moving a deployment on
purpose is ``ephemera migrate --move`` with the new URLs: it rewrites the record.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ephemera.blobs import open_blob_store
from ephemera.catalog import Catalog
from ephemera.config import Settings
from ephemera.errors import BackendMismatch, StorageError
from ephemera.fsutil import make_dirs
from ephemera.urls import redact_url, without_secrets

RECORD_FILE = "deployment.json"


@dataclass(frozen=True, slots=True)
class Backends:
    """The resolved backend URLs; ``None`` in a record stands for the embedded default."""

    metadata: str
    blobs: str
    metadata_default: bool
    blobs_default: bool

    @classmethod
    def of(cls, settings: Settings) -> Backends:
        defaults = settings.model_copy(update={"database_url": None, "blob_url": None})
        metadata, blobs = settings.resolved_database_url(), settings.resolved_blob_url()
        return cls(
            metadata,
            blobs,
            metadata == defaults.resolved_database_url(),
            blobs == defaults.resolved_blob_url(),
        )

    def describe(self) -> str:
        return f"metadata {redact_url(self.metadata)} · blobs {redact_url(self.blobs)}"

    def recorded(self) -> dict[str, str | None]:
        # The defaults are recorded as such, not as paths: a data dir that is moved or
        # mounted elsewhere is still the same deployment.
        return {
            "metadata": None if self.metadata_default else redact_url(self.metadata),
            "blobs": None if self.blobs_default else redact_url(self.blobs),
        }


def read_record(data_dir: Path) -> dict[str, Any] | None:
    try:
        text = (data_dir / RECORD_FILE).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {data_dir / RECORD_FILE}: {exc.strerror}") from exc
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise StorageError(
            f"{data_dir / RECORD_FILE} is damaged: rewrite it with `ephemera migrate --move` "
            "and the deployment's URLs"
        )
    return record


def write_record(data_dir: Path, backends: Backends) -> None:
    """Atomically, readable by the owner only: it names database hosts and users."""
    record = {**backends.recorded(), "written_at": datetime.now(UTC).isoformat()}
    try:
        fd, temp = tempfile.mkstemp(dir=data_dir, prefix=f".{RECORD_FILE}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, data_dir / RECORD_FILE)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write {data_dir / RECORD_FILE}: {exc.strerror}") from exc


def check_record(data_dir: Path, backends: Backends) -> None:
    """Refuse backends other than the recorded ones (no record: nothing to compare)."""
    record = read_record(data_dir)
    if record is None:
        return
    current = backends.recorded()
    wrong = [
        (part, flag, record.get(part))
        for part, flag in (("metadata", "--database-url"), ("blobs", "--blob-url"))
        if _identity(record.get(part)) != _identity(current[part])
    ]
    if not wrong:
        return
    fixes = "; ".join(
        f"{part} is {_shown(expected)}, not {_shown(current[part])}: "
        + (
            f"pass {flag} {expected}{' (with its password)' if '***' in expected else ''} "
            f"(or set EPHEMERA_{_variable(part)})"
            if expected is not None
            else f"drop {flag} and EPHEMERA_{_variable(part)}"
        )
        for part, flag, expected in wrong
    )
    raise BackendMismatch(
        f"{data_dir.resolve()} belongs to a deployment whose {fixes}. To move it on "
        "purpose, run `ephemera migrate --move` with the new URLs"
    )


def check_urls(backends: Backends) -> None:
    """Refuse a malformed or unsupported URL, before anything is created (no I/O)."""
    open_blob_store(backends.blobs)
    Catalog.open(backends.metadata, create=False).dispose()


def check_writable(data_dir: Path, dir_mode: int = 0o700) -> None:
    """Create the data dir if missing and prove a file can be written in it."""
    try:
        make_dirs(data_dir, dir_mode)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-check."):
            pass
    except OSError as exc:
        raise StorageError(
            f"data dir {data_dir} is not writable ({exc.strerror}): fix its permissions, "
            "or choose another with --data-dir or EPHEMERA_DATA_DIR"
        ) from exc


def _identity(url: str | None) -> str | None:
    # Credentials do not name a backend: a password given another way is the same database.
    return without_secrets(url) if url is not None else None


def _shown(url: str | None) -> str:
    return url if url is not None else "the default in the data dir"


def _variable(part: str) -> str:
    return "DATABASE_URL" if part == "metadata" else "BLOB_URL"
