"""The HTTP client: speaks ephemera's API from another process or machine.

``Client`` has one method per API operation; ``AsyncClient`` the ones that move bytes or wait.
Answers become the library's records (``ephemera.models``), error answers the library's
exceptions (``ephemera.errors``); uploads and downloads stream and are checked against the
sha256, large uploads go over tus and resume after failures; ``client.lease(...)`` holds a
lease for a ``with`` block; ``client.events(sid)`` follows a session live; ``client.link(...)``
signs a download link; creating requests take an ``idempotency_key`` and are then retried
safely.
"""

from ephemera.client.aio import AsyncClient
from ephemera.client.common import API_PREFIX
from ephemera.client.errors import LeaseLost, ServerUnreachable, WaitTimeout, error_of
from ephemera.client.events import AsyncEventStream, EventStream
from ephemera.client.lease import AsyncHeldLease, HeldLease
from ephemera.client.records import (
    DownloadLink,
    ListedSession,
    artifact_of,
    import_entry_of,
    session_of,
    task_of,
)
from ephemera.client.resume import ResumeStore
from ephemera.client.sync import Client
from ephemera.client.transfer import CHUNK_SIZE

__all__ = [
    "API_PREFIX",
    "CHUNK_SIZE",
    "AsyncClient",
    "AsyncEventStream",
    "AsyncHeldLease",
    "Client",
    "DownloadLink",
    "EventStream",
    "HeldLease",
    "LeaseLost",
    "ListedSession",
    "ResumeStore",
    "ServerUnreachable",
    "WaitTimeout",
    "artifact_of",
    "error_of",
    "import_entry_of",
    "session_of",
    "task_of",
]
