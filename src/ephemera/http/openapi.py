"""The OpenAPI document, shaped for clients that generate code from it.

An operation's ID is part of the contract: generated clients name their functions after it.
It is the route function's name in camelCase (``create_session`` → ``createSession``),
whatever router or prefix the route is included under, so routes added later get one too.
Bodies and answers the routes handle themselves (uploads, raw downloads) are described here,
and the models they refer to by ``$ref`` are added to the document's components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from ephemera.http.schemas import ErrorBody, JsonUpload
from ephemera.models import MAX_TIMEOUT_S

SCHEMAS = "#/components/schemas/"
BINARY = {"type": "string", "format": "binary"}


def operation_id(route: APIRoute) -> str:
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


MULTIPART_UPLOAD: dict[str, Any] = {
    "title": "MultipartUpload",
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {**BINARY, "description": "The bytes; its filename is the default name"},
        "name": {"type": "string", "maxLength": 1000},
        "kind": {"type": "string"},
        "content_type": {"type": "string", "maxLength": 255},
        "storage": {"type": "string", "enum": ["persistent", "temporary"]},
        "expires_in_s": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_S},
        "sha256": {"type": "string", "description": "Refused with 400 if the bytes differ"},
    },
    "additionalProperties": False,
    "description": "Form fields may come before or after the file part; they override the query.",
}

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Raw bytes (name and the rest in the query), a multipart form with a "
        "`file` part, or JSON with the bytes in base64 (small files only).",
        "content": {
            "application/octet-stream": {"schema": BINARY},
            "multipart/form-data": {"schema": {"$ref": SCHEMAS + "MultipartUpload"}},
            "application/json": {"schema": {"$ref": SCHEMAS + "JsonUpload"}},
        },
    }
}

UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorBody, "description": "The body stalled; nothing was stored"},
    429: {"model": ErrorBody, "description": "Too many uploads in flight in this session"},
    507: {"model": ErrorBody, "description": "The volume is full; nothing was stored"},
}

RAW_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The raw bytes, streamed",
        "content": {"application/octet-stream": {"schema": BINARY}},
    }
}


def _header(description: str, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


# Served under the artifact's own content type; generated clients take any body as bytes.
_BYTES = {"application/octet-stream": {"schema": BINARY}}
_ETAG = _header("The sha256 of the whole artifact, quoted")
_DISPOSITION = _header("attachment, with the artifact's name")


def _request_header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "description": description, "schema": {"type": "string"}}


# The download reads these headers from the request itself; they are described here.
CONTENT_REQUEST: dict[str, Any] = {
    "parameters": [
        _request_header(
            "Range",
            "One byte range, `bytes=first-last`, `bytes=first-` or `bytes=-suffix`; several "
            "ranges or another unit get the whole body",
        ),
        _request_header("If-Range", "The ETag the range is meant for; otherwise all bytes"),
        _request_header("If-None-Match", "ETags already held: 304 if one matches"),
    ]
}

CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The stored bytes, with the artifact's content type",
        "content": _BYTES,
        "headers": {"ETag": _ETAG, "Content-Disposition": _DISPOSITION},
    },
    206: {
        "description": "The requested range of the stored bytes",
        "content": _BYTES,
        "headers": {
            "ETag": _ETAG,
            "Content-Range": _header("`bytes first-last/size`"),
        },
    },
    304: {
        "description": "Not modified: If-None-Match named the ETag",
        "headers": {"ETag": _ETAG},
    },
    416: {
        "model": ErrorBody,
        "description": "Range malformed or outside the bytes: nothing is served",
        "headers": {"Content-Range": _header("`bytes */size`")},
    },
    500: {
        "model": ErrorBody,
        "description": "artifact_corrupt: verification found the stored bytes wrong or missing",
    },
}


def _components(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    schema = model.model_json_schema(ref_template=SCHEMAS + "{model}")
    return {**schema.pop("$defs", {}), model.__name__: schema}


# What the descriptions above refer to by ``$ref``, by component name.
REFERENCED: dict[str, dict[str, Any]] = {
    **_components(JsonUpload),
    "MultipartUpload": MULTIPART_UPLOAD,
}


def install_openapi(app: FastAPI) -> None:
    """Complete the app's document with the components the descriptions above refer to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()  # also kept as app.openapi_schema
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in REFERENCED.items():
            schemas.setdefault(name, schema)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
