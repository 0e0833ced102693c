"""Markdown reference of the processors' params, generated from their JSON schemas.

The README holds this text between markers and a test compares it with the command's output,
so the documentation of a parameter is written once, in its pydantic model.

Nested models are flattened into dotted rows (``regions[].box.x``): a table of one level per
model would make the reader jump between tables to learn what one request looks like.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ephemera.processors import ProcessorInfo

Schema = Mapping[str, Any]

# Guards against a self-referencing model (a tree of nodes): its rows stop at this depth.
MAX_DEPTH = 6


def processors_markdown(infos: Sequence[ProcessorInfo]) -> str:
    """One section per processor: its description, then a table of its params."""
    parts = [_section(info) for info in infos]
    return "\n".join(parts) if parts else "No processor is enabled.\n"


def _section(info: ProcessorInfo) -> str:
    lines = [f"#### `{info.name}`", ""]
    if info.description:
        lines += [" ".join(info.description.split()), ""]
    if info.params_schema is None:
        lines += ["Run by external workers, which check its params.", ""]
        return "\n".join(lines)
    rows = list(_rows(info.params_schema, info.params_schema, prefix="", depth=0))
    if not rows:
        lines += ["No params.", ""]
        return "\n".join(lines)
    lines += ["| param | type | default | description |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(_cell(c) for c in row)} |" for row in rows]
    lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    # A pipe would end the cell; a newline would end the row.
    return " ".join(text.split()).replace("|", "\\|")


def _rows(root: Schema, schema: Schema, *, prefix: str, depth: int) -> Iterator[list[str]]:
    """[name, type, default, description] for each property, then for what it nests."""
    obj = _resolve(root, schema)
    required = set(obj.get("required", ()))
    for name, raw in obj.get("properties", {}).items():
        path = f"{prefix}{name}"
        prop = _resolve(root, raw)
        kind = _type(root, prop)
        if name in required:
            kind += ", required"
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        description = str(raw.get("description") or prop.get("description") or "")
        yield [f"`{path}`", kind, default, description]
        if depth >= MAX_DEPTH:
            continue
        nested, suffix = _nested_object(root, prop)
        if nested is not None:
            yield from _rows(root, nested, prefix=f"{path}{suffix}.", depth=depth + 1)


def _resolve(root: Schema, schema: Schema) -> Schema:
    """Follow ``$ref`` into ``$defs``; a schema's own keys override what it refers to."""
    seen: set[str] = set()
    while "$ref" in schema:
        ref = str(schema["$ref"])
        if ref in seen or not ref.startswith("#/"):
            break
        seen.add(ref)
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _variants(root: Schema, schema: Schema) -> list[Schema]:
    """The alternatives of an ``anyOf``/``oneOf`` (an optional field: the type and null)."""
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return [_resolve(root, s) for s in schema[key]]
    return [schema]


def _nested_object(root: Schema, schema: Schema) -> tuple[Schema | None, str]:
    """The object schema whose properties get rows of their own, and the path suffix to it."""
    for variant in _variants(root, schema):
        if "properties" in variant:
            return variant, ""
        if variant.get("type") == "array" and "items" in variant:
            items = _resolve(root, variant["items"])
            if "properties" in items:
                return items, "[]"
    return None, ""


def _type(root: Schema, schema: Schema) -> str:
    variants = _variants(root, schema)
    names = [_one_type(root, v) for v in variants if v.get("type") != "null"]
    text = " or ".join(names) or "null"
    if len(names) < len(variants) and names:
        text += ", or null"
    return text


def _one_type(root: Schema, schema: Schema) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type")
    if kind == "array":
        items = _resolve(root, schema.get("items", {}))
        of = _one_type(root, items) if items else "anything"
        plural = {"object": "objects", "string": "strings", "integer": "integers"}
        text = f"array of {plural.get(of, of)}"
        return text + _bounds(schema, "minItems", "maxItems", "items")
    if kind == "object" or "properties" in schema:
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and extra and "properties" not in schema:
            return f"object of {_one_type(root, _resolve(root, extra))}"
        return "object"
    if kind == "string":
        if schema.get("minLength") == 1 and "maxLength" not in schema:
            text = "non-empty string"
        else:
            text = "string" + _bounds(schema, "minLength", "maxLength", "characters")
        if "pattern" in schema:
            text += f" matching `{schema['pattern']}`"
        if "format" in schema:
            text += f" ({schema['format']})"
        return text
    if kind in ("integer", "number"):
        return str(kind) + _range(schema)
    if kind == "boolean":
        return "boolean"
    return str(kind) if kind else "anything"


def _bounds(schema: Schema, low_key: str, high_key: str, unit: str) -> str:
    low, high = schema.get(low_key), schema.get(high_key)
    if low is not None and low == high:
        # "1 characters" would read oddly; a delimiter is "exactly 1 character".
        return f", exactly {low} {unit.removesuffix('s') if low == 1 else unit}"
    if low is not None and high is not None:
        return f", {low} to {high} {unit}"
    if low is not None:
        return f", at least {low} {unit}"
    if high is not None:
        return f", at most {high} {unit}"
    return ""


def _range(schema: Schema) -> str:
    if "minimum" in schema and "maximum" in schema:
        return f" from {schema['minimum']} to {schema['maximum']}"
    parts = []
    for key, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in schema:
            parts.append(f"{sign} {schema[key]}")
    return f" {', '.join(parts)}" if parts else ""
