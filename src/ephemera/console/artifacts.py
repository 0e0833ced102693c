"""An artifact's bytes for a signed-in browser: downloads, and pictures shown in pages.

The bytes go out exactly as the API serves them (``serve_artifact``: ETag, Range, streamed
and verified). Shown inline are only raster images, whose types a browser never runs:
anything else (SVG, HTML, PDF) downloads as an attachment, so a file uploaded to a session
can never act as a page of the console.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ephemera.console.auth import Console
from ephemera.errors import NotFound
from ephemera.http.downloads import serve_artifact
from ephemera.models import ConsoleLogin

INLINE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif"}
)


def shown_inline(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in INLINE_TYPES


def content_url(session_id: str, artifact_id: str) -> str:
    return f"/console/sessions/{session_id}/artifacts/{artifact_id}/content"


def image_url(session_id: str, artifact_id: str) -> str:
    """For ``<img src>``: the bytes, inline (only raster images are served so)."""
    return content_url(session_id, artifact_id) + "?inline=1"


def add_routes(router: APIRouter, console: Console) -> None:
    store = console.store

    @router.get("/sessions/{session_id}/artifacts/{artifact_id}/content")
    def artifact_content(
        session_id: str,
        artifact_id: str,
        request: Request,
        inline: bool = False,
        login: ConsoleLogin = Depends(console.login),
    ) -> Response:
        """The bytes: an attachment, or inline when asked for and a raster image."""
        console.workspace(session_id, login)
        artifact = store.get_artifact(session_id, artifact_id)
        if artifact.size is None or artifact.sha256 is None:
            raise NotFound(f"artifact {artifact_id} not found")
        disposition = "inline" if inline and shown_inline(artifact.content_type) else "attachment"
        return serve_artifact(store, artifact, request, disposition)
