"""image-catalog: a thumbnail, EXIF, a perceptual hash and honest tags per image; near-duplicates.

Each image input is decoded once by Pillow (EXIF orientation applied first), and yields a
lossless thumbnail and a catalog entry (JSON) as outputs. Inputs that are catalog entries of
earlier image-catalog tasks are read, not decoded again, so one task over a session's entries
groups the whole session. Groups are the connected components of "perceptual hashes within
``duplicate_distance`` bits".

An input that cannot be catalogued (not an image, truncated, too large) fails alone, named in
the result with the reason; the task fails only when every image input does.

The tags are what the pixels show without a model: orientation, aspect, grayscale,
transparency, brightness (mean luminance), blur (variance of the Laplacian) and dominant
colours (the share of each colour of a fixed palette, nearest in CIELAB).

This module is the task: its parameters, its items and entries, and grouping. Decoding and
the thumbnail are ``image_decode``'s, the tags and the hash ``image_tags``'; their names are
importable from here too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any, Literal

from PIL import features
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ephemera.errors import EphemeraError, InvalidInput
from ephemera.models import Artifact
from ephemera.processors import TaskContext, TaskFailed
from ephemera.processors.image_decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_ERRORS,
    MAX_PIXELS_CEILING,
    ItemFailed,
    analysis_error,
    decode,
    encode_thumbnail,
)
from ephemera.processors.image_tags import (
    ANALYSIS_SIDE,
    analyse,
    perceptual_hash,
)
from ephemera.processors.near_duplicates import HashedImage, group_duplicates

__all__ = [
    "ENTRY_KIND",
    "ENTRY_SCHEMA",
    "ENTRY_SUFFIX",
    "MAX_ENTRY_BYTES",
    "MAX_INPUT_BYTES",
    "THUMBNAIL_KIND",
    "ImageCatalog",
    "ImageCatalogParams",
    "is_entry",
]

ENTRY_SCHEMA = "ephemera.image-catalog/1"
ENTRY_SUFFIX = ".catalog.json"
# Task outputs are of the kinds old-results cleanup knows; the names tell entries apart.
ENTRY_KIND = "result"
THUMBNAIL_KIND = "output"
MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_ENTRY_BYTES = 1024 * 1024


class ImageCatalogParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thumbnail_size: int = Field(
        default=256, ge=16, le=1024, description="longest edge of a thumbnail, in pixels"
    )
    thumbnail_format: Literal["png", "webp"] = Field(
        default="png", description="thumbnail encoding, lossless either way"
    )
    gps: bool = Field(
        default=False, description="report EXIF GPS latitude and longitude (off: never stored)"
    )
    hash: Literal["phash", "dhash"] = Field(
        default="phash", description="perceptual hash (64 bits) used to find near-duplicates"
    )
    duplicate_distance: int = Field(
        default=8,
        ge=0,
        le=32,
        description="most differing hash bits for two images to count as near-duplicates",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        le=MAX_PIXELS_CEILING,
        description="larger images fail (decompression-bomb guard)",
    )


class _EntryHash(BaseModel):
    algorithm: Literal["phash", "dhash"]
    value: str = Field(pattern=r"^[0-9a-f]{16}$")


class _GivenEntry(BaseModel):
    """What grouping needs of an earlier catalog entry; the rest is carried through."""

    schema_: Literal["ephemera.image-catalog/1"] = Field(alias="schema")
    artifact_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=1024)
    hash: _EntryHash


class ImageCatalog:
    name = "image-catalog"
    description = (
        "A catalogue of images: per image a lossless thumbnail (EXIF orientation honoured), "
        "dimensions, format, EXIF (camera, lens, exposure, taken-at; GPS only when asked), a "
        "perceptual hash and tags computed from the pixels (orientation, aspect, grayscale, "
        "alpha, brightness, blur, dominant colours), stored as a catalog entry; near-duplicates "
        "grouped by hash distance, across earlier tasks when their catalog entries are inputs. "
        "An image that cannot be read fails alone, named with the reason."
    )
    params_model = ImageCatalogParams

    def check_inputs(self, params: ImageCatalogParams, inputs: Sequence[Artifact]) -> None:
        if not inputs:
            raise InvalidInput("image-catalog needs at least one image or catalog entry")
        if params.thumbnail_format == "webp" and not features.check("webp"):
            raise InvalidInput("thumbnail_format 'webp' is not available here (no WebP support)")

    def run(self, ctx: TaskContext, params: ImageCatalogParams) -> dict[str, Any]:
        total = len(ctx.inputs)
        ctx.progress(0, total)
        items: list[dict[str, Any]] = []
        given: list[dict[str, str]] = []
        failed: list[dict[str, str]] = []
        new_nodes: list[HashedImage] = []
        given_nodes: list[HashedImage] = []
        stems: set[str] = set()
        images = 0
        for index, artifact in enumerate(ctx.inputs):
            try:
                if is_entry(artifact):
                    node = _read_entry(ctx, artifact, params)
                    given_nodes.append(node)
                    given.append(
                        {
                            "catalog_id": artifact.id,
                            "artifact_id": node.artifact_id,
                            "name": node.name,
                        }
                    )
                else:
                    images += 1
                    item, node = _catalogue(ctx, artifact, params, stems)
                    new_nodes.append(node)
                    items.append(item)
            except ItemFailed as exc:
                failed.append(
                    {
                        "artifact_id": artifact.id,
                        "name": artifact.name,
                        "error": f"{artifact.name}: {exc}",
                    }
                )
            ctx.check_cancelled()
            ctx.progress(index + 1, total)

        if (images and not items) or (not images and not given):
            raise TaskFailed(_all_failed(failed))
        return {
            "items": items,
            "given": given,
            "failed": failed,
            "groups": group_duplicates(_unique(new_nodes + given_nodes), params.duplicate_distance),
            "hash": params.hash,
            "duplicate_distance": params.duplicate_distance,
        }


def is_entry(artifact: Artifact) -> bool:
    return artifact.name.endswith(ENTRY_SUFFIX)


def _all_failed(failed: list[dict[str, str]]) -> str:
    shown = "; ".join(f["error"] for f in failed[:10])
    more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
    return f"no input could be catalogued: {shown}{more}"


def _unique(nodes: list[HashedImage]) -> list[HashedImage]:
    # One image catalogued again, or given twice, is one member: the first (newest) counts.
    seen: dict[str, HashedImage] = {}
    for node in nodes:
        seen.setdefault(node.artifact_id, node)
    return list(seen.values())


# -- one image ---------------------------------------------------------------------------------


def _catalogue(
    ctx: TaskContext, artifact: Artifact, params: ImageCatalogParams, stems: set[str]
) -> tuple[dict[str, Any], HashedImage]:
    """Decode, analyse and store one image; nothing is written unless all of it succeeds."""
    if artifact.size > MAX_INPUT_BYTES:
        raise ItemFailed(f"is {artifact.size} bytes, above the {MAX_INPUT_BYTES} bytes read")
    need = max(params.thumbnail_size, ANALYSIS_SIDE)
    with ctx.open_input(artifact.id) as stream:
        decoded = decode(stream, params.max_pixels, need, gps=params.gps)
    image = decoded.image
    try:
        analysis = analyse(image, decoded.mode)
        hash_value = perceptual_hash(image, params.hash)
        thumbnail, content_type = encode_thumbnail(
            image, params.thumbnail_size, params.thumbnail_format
        )
    except EphemeraError:
        raise
    except IMAGE_ERRORS as exc:
        raise ItemFailed(analysis_error(exc)) from None

    stem = _unique_stem(PurePosixPath(artifact.name).stem or "image", stems)
    thumb = ctx.write_output(
        f"{stem}.thumb.{params.thumbnail_format}",
        thumbnail.data,
        kind=THUMBNAIL_KIND,
        content_type=content_type,
    )
    entry: dict[str, Any] = {
        "schema": ENTRY_SCHEMA,
        "artifact_id": artifact.id,
        "name": artifact.name,
        "sha256": artifact.sha256,
        "size": artifact.size,
        "task_id": ctx.task_id,
        "format": decoded.format,
        "mode": decoded.mode,
        "frames": decoded.frames,
        "width": decoded.width,
        "height": decoded.height,
        "exif": decoded.exif,
        "hash": {"algorithm": params.hash, "value": f"{hash_value:016x}"},
        **analysis,
        "thumbnail": {
            "artifact_id": thumb.id,
            "name": thumb.name,
            "width": thumbnail.width,
            "height": thumbnail.height,
        },
    }
    catalog = ctx.write_output(
        f"{stem}{ENTRY_SUFFIX}",
        json.dumps(entry, indent=2, allow_nan=False).encode(),
        kind=ENTRY_KIND,
        content_type="application/json",
    )
    item = {
        "artifact_id": artifact.id,
        "name": artifact.name,
        "format": decoded.format,
        "width": decoded.width,
        "height": decoded.height,
        "hash": entry["hash"]["value"],
        "tags": analysis["tags"],
        "thumbnail": {"artifact_id": thumb.id, "name": thumb.name},
        "catalog": {"artifact_id": catalog.id, "name": catalog.name},
    }
    return item, HashedImage(artifact.id, artifact.name, hash_value)


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


# -- earlier entries and groups ----------------------------------------------------------------


def _read_entry(ctx: TaskContext, artifact: Artifact, params: ImageCatalogParams) -> HashedImage:
    if artifact.size > MAX_ENTRY_BYTES:
        raise ItemFailed(f"is {artifact.size} bytes; a catalog entry is at most {MAX_ENTRY_BYTES}")
    try:
        entry = _GivenEntry.model_validate_json(ctx.read_input(artifact.id))
    except ValidationError:
        raise ItemFailed("is not a catalog entry of image-catalog") from None
    if entry.hash.algorithm != params.hash:
        raise ItemFailed(
            f"holds a {entry.hash.algorithm} hash; this task compares {params.hash} hashes"
        )
    return HashedImage(entry.artifact_id, entry.name, int(entry.hash.value, 16))
