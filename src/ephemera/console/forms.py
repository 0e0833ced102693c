"""A processor's parameters as an HTML form generated from their JSON schema, and the posted
form read back into params, checked against the same schema.

Each property becomes one control: a string a text box, a number or integer a number box
(with its bounds), a boolean a checkbox, an enum a select, an object with properties a
fieldset of its own controls. A string naming an artifact (``"format": "artifact-id"``, or a
description that speaks of an "artifact ID", as the built-ins' do) is chosen among the
session's artifacts: one with a select, an array of them with checkboxes. Whatever cannot be
rendered so (arrays of objects, free-form mappings, unions) is a JSON text area.

Reading checks what the schema says of each control (required, bounds, lengths, pattern,
choices, JSON syntax and type); the processor's own model validates the whole at submission,
so nothing here needs to be complete, only to answer a person's mistakes next to the control
that made them. Field names are ``p.`` and the property path (``p.board.columns``), so no
property name can collide with the form's own fields.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ARTIFACT_FORMAT = "artifact-id"
PREFIX = "p."
# Objects nested deeper than this (or a schema that refers to itself) are edited as JSON.
MAX_DEPTH = 4
_ARTIFACT_WORDS = re.compile(r"\bartifact IDs?\b", re.IGNORECASE)
_NO_DEFAULT = object()


@dataclass(frozen=True)
class Field:
    """One control of the form (or, for ``group``, a fieldset of them)."""

    path: tuple[str, ...]
    label: str
    description: str | None
    # text, number, integer, checkbox, select, artifact, artifacts, json or group
    widget: str
    required: bool  # by the object that holds it
    # Required all the way from the root: only then may the browser insist on a value.
    html_required: bool
    nullable: bool
    schema: Mapping[str, Any]
    default: Any = _NO_DEFAULT
    options: tuple[Any, ...] = ()
    children: tuple[Field, ...] = ()
    example: str | None = None

    @property
    def name(self) -> str:
        return PREFIX + ".".join(self.path)

    @property
    def html_id(self) -> str:
        return "p-" + "-".join(re.sub(r"[^A-Za-z0-9_]", "_", part) for part in self.path)

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT

    @property
    def minimum(self) -> float | None:
        return _bound(self.schema, "minimum", "exclusiveMinimum")

    @property
    def maximum(self) -> float | None:
        return _bound(self.schema, "maximum", "exclusiveMaximum")


@dataclass
class Submission:
    """The params read from a form, the problems found (by field name, ``""`` for the form
    as a whole), and what to show again in each control when the form comes back."""

    params: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _bound(schema: Mapping[str, Any], inclusive: str, exclusive: str) -> float | None:
    value = schema.get(inclusive, schema.get(exclusive))
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def build_form(schema: Mapping[str, Any] | None) -> list[Field]:
    """The controls for a params schema (an object schema, as pydantic writes them)."""
    if not schema:
        return []
    defs = schema.get("$defs") or schema.get("definitions") or {}
    return list(_fields(schema, defs, (), True, 0))


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """A ``$ref`` to ``#/$defs/...`` replaced by its target; the referring node's own keys
    (title, description, default) win."""
    resolved = dict(node)
    seen: set[str] = set()
    while "$ref" in resolved:
        ref = resolved.pop("$ref")
        name = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else ""
        target = defs.get(name)
        if name in seen or not isinstance(target, Mapping):
            return {"description": resolved.get("description"), "title": resolved.get("title")}
        seen.add(name)
        resolved = {**target, **resolved}
    return resolved


def _fields(
    schema: Mapping[str, Any],
    defs: Mapping[str, Any],
    path: tuple[str, ...],
    chain_required: bool,
    depth: int,
) -> Iterable[Field]:
    required = set(schema.get("required") or ())
    properties = schema.get("properties") or {}
    for key, prop in properties.items():
        if isinstance(prop, Mapping):
            own = key in required
            yield _field(
                str(key), prop, own, chain_required and own, defs, (*path, str(key)), depth
            )


def _field(
    key: str,
    raw: Mapping[str, Any],
    required: bool,
    html_required: bool,
    defs: Mapping[str, Any],
    path: tuple[str, ...],
    depth: int,
) -> Field:
    node = _resolve(raw, defs)
    nullable = False
    union = node.get("anyOf") or node.get("oneOf")
    if isinstance(union, list):
        choices = [_resolve(c, defs) for c in union if isinstance(c, Mapping)]
        others = [c for c in choices if c.get("type") != "null"]
        if len(others) == 1 and len(choices) == len(union) == 2:
            nullable = True
            outer = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
            node = {**others[0], **outer}
    label = str(node.get("title") or key)
    description = node.get("description")
    description = str(description) if description else None
    default = node.get("default", _NO_DEFAULT)
    kind = node.get("type")
    common: dict[str, Any] = {
        "path": path,
        "label": label,
        "description": description,
        "required": required,
        "html_required": html_required,
        "nullable": nullable,
        "schema": node,
        "default": default,
    }
    enum = node.get("enum")
    if "anyOf" in node or "oneOf" in node:
        return Field(widget="json", example=_example(node, defs), **common)
    if isinstance(enum, list) and enum and all(isinstance(v, str | int | float) for v in enum):
        return Field(widget="select", options=tuple(enum), **common)
    if kind == "boolean":
        return Field(widget="checkbox", **common)
    if kind in ("integer", "number"):
        return Field(widget=str(kind), **common)
    if kind == "string":
        return Field(widget="artifact" if _names_artifacts(node) else "text", **common)
    items = node.get("items")
    if (
        kind == "array"
        and isinstance(items, Mapping)
        and _resolve(items, defs).get("type") == "string"
        and _names_artifacts(node)
    ):
        return Field(widget="artifacts", **common)
    if kind == "object" and node.get("properties") and depth < MAX_DEPTH:
        children = tuple(_fields(node, defs, path, html_required, depth + 1))
        return Field(widget="group", children=children, **common)
    return Field(widget="json", example=_example(node, defs), **common)


def _names_artifacts(node: Mapping[str, Any]) -> bool:
    if node.get("format") == ARTIFACT_FORMAT:
        return True
    items = node.get("items")
    if isinstance(items, Mapping) and items.get("format") == ARTIFACT_FORMAT:
        return True
    return bool(_ARTIFACT_WORDS.search(str(node.get("description") or "")))


def _example(node: Mapping[str, Any], defs: Mapping[str, Any]) -> str | None:
    """A skeleton of the value, to show beside a JSON text area."""
    value = _skeleton(node, defs, 0)
    return None if value is None else json.dumps(value, indent=2)


def _skeleton(raw: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> Any:
    node = _resolve(raw, defs)
    if depth > MAX_DEPTH:
        return None
    if "default" in node and node["default"] is not None:
        return node["default"]
    union = node.get("anyOf") or node.get("oneOf")
    if isinstance(union, list):
        for choice in union:
            if isinstance(choice, Mapping) and choice.get("type") != "null":
                return _skeleton(choice, defs, depth + 1)
        return None
    enum = node.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties") or {}
        if not properties:
            return {}
        return {
            str(k): _skeleton(v, defs, depth + 1)
            for k, v in properties.items()
            if isinstance(v, Mapping)
        }
    if kind == "array":
        items = node.get("items")
        return [_skeleton(items, defs, depth + 1)] if isinstance(items, Mapping) else []
    return {"string": "", "integer": 0, "number": 0, "boolean": False}.get(str(kind))


# -- what the controls show ------------------------------------------------------------------


def labels(fields: Sequence[Field], within: str = "") -> dict[str, str]:
    """Each control's name to its label, with its groups' (``Board > Columns``): how a
    problem names the control it is about."""
    found: dict[str, str] = {}
    for f in fields:
        label = f"{within} > {f.label}" if within else f.label
        found[f.name] = label
        found.update(labels(f.children, label))
    return found


def initial_values(fields: Sequence[Field]) -> dict[str, Any]:
    """Each control's value before anything is typed: the schema's defaults."""
    values: dict[str, Any] = {}
    for f in fields:
        if f.widget == "group":
            values.update(initial_values(f.children))
        elif not f.has_default or f.default is None:
            continue
        elif f.widget == "checkbox":
            values[f.name] = bool(f.default)
        elif f.widget == "artifacts":
            values[f.name] = [str(v) for v in f.default] if isinstance(f.default, list) else []
        elif f.widget == "json":
            values[f.name] = json.dumps(f.default, indent=2)
        else:
            values[f.name] = str(f.default)
    return values


# -- reading a posted form -------------------------------------------------------------------


class _Problem(ValueError):
    pass


def read_form(
    fields: Sequence[Field],
    form: Mapping[str, Sequence[str]],
    artifact_ids: Iterable[str],
) -> Submission:
    """The params the posted ``form`` (each name to its values) stands for.

    ``artifact_ids`` are the session's: a control that chooses artifacts accepts no other.
    """
    submission = Submission()
    known = frozenset(artifact_ids)
    submission.params = _read_object(fields, form, known, submission)
    return submission


def _read_object(
    fields: Sequence[Field],
    form: Mapping[str, Sequence[str]],
    known: frozenset[str],
    submission: Submission,
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for f in fields:
        key = f.path[-1]
        if f.widget == "group":
            inner = Submission(values=submission.values)
            value = _read_object(f.children, form, known, inner)
            if not f.required and not _typed(f, form):
                continue  # nothing typed in an optional group: its children's demands lapse
            submission.errors.update(inner.errors)
            params[key] = value
            continue
        given = list(form.get(f.name, ()))
        try:
            present, value = _read(f, given, known, submission.values)
        except _Problem as problem:
            submission.errors[f.name] = str(problem)
            continue
        if present:
            params[key] = value
    return params


def _typed(group: Field, form: Mapping[str, Sequence[str]]) -> bool:
    """Whether anything was typed or chosen in a group (a checkbox alone says nothing)."""
    for f in group.children:
        if f.widget == "group":
            if _typed(f, form):
                return True
        elif f.widget != "checkbox" and any(v.strip() for v in form.get(f.name, ())):
            return True
    return False


def _read(
    f: Field, given: list[str], known: frozenset[str], shown: dict[str, Any]
) -> tuple[bool, Any]:
    """(whether the control gave a value, the value); _Problem names what is wrong."""
    if f.widget == "checkbox":
        checked = any(v in ("true", "on", "1") for v in given)
        shown[f.name] = checked
        return True, checked
    if f.widget == "artifacts":
        chosen = [v for v in given if v]
        shown[f.name] = chosen
        if not chosen:
            if f.required and not f.nullable:
                raise _Problem("choose at least one artifact")
            return False, None
        strangers = [v for v in chosen if v not in known]
        if strangers:
            raise _Problem("not an artifact of this session: " + ", ".join(strangers[:3]))
        _check_items(f.schema, chosen)
        return True, chosen
    text = given[0] if given else ""
    shown[f.name] = text
    if f.widget != "json":
        text = text.strip()
    if not text.strip():
        if not f.required:
            return False, None
        if f.nullable:
            return True, None
        raise _Problem("required")
    if f.widget == "text":
        _check_string(f.schema, text)
        return True, text
    if f.widget == "artifact":
        if text not in known:
            raise _Problem("not an artifact of this session")
        return True, text
    if f.widget in ("integer", "number"):
        return True, _read_number(f, text)
    if f.widget == "select":
        for option in f.options:
            if str(option) == text:
                return True, option
        raise _Problem("choose one of: " + ", ".join(str(o) for o in f.options))
    return True, _read_json(f, text)


def _check_string(schema: Mapping[str, Any], text: str) -> None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        raise _Problem(f"at least {low} characters")
    if isinstance(high, int) and len(text) > high:
        raise _Problem(f"at most {high} characters")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            matches = re.search(pattern, text) is not None
        except re.error:
            matches = True  # a pattern Python cannot read: the processor's model decides
        if not matches:
            raise _Problem(f"must match {pattern}")


def _check_items(schema: Mapping[str, Any], items: Sequence[Any]) -> None:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(items) < low:
        raise _Problem(f"at least {low} items")
    if isinstance(high, int) and len(items) > high:
        raise _Problem(f"at most {high} items")


def _read_number(f: Field, text: str) -> int | float:
    number: int | float
    try:
        if f.widget == "integer":
            number = int(text)
        else:
            number = float(text)
            if number.is_integer() and "." not in text and "e" not in text.lower():
                number = int(number)
    except ValueError:
        raise _Problem("a whole number" if f.widget == "integer" else "a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise _Problem("a finite number")
    for key, fails, message in _NUMBER_CHECKS:
        bound = f.schema.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool) and fails(number, bound):
            raise _Problem(message.format(bound))
    return number


_NUMBER_CHECKS: tuple[tuple[str, Callable[[float, float], bool], str], ...] = (
    ("minimum", operator.lt, "at least {}"),
    ("exclusiveMinimum", operator.le, "more than {}"),
    ("maximum", operator.gt, "at most {}"),
    ("exclusiveMaximum", operator.ge, "less than {}"),
)


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _read_json(f: Field, text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Problem(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if value is None and f.nullable:
        return None
    wanted = f.schema.get("type")
    types = _JSON_TYPES.get(wanted) if isinstance(wanted, str) else None
    if types is not None and (
        not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
    ):
        raise _Problem(f"must be a JSON {wanted}")
    if isinstance(value, list):
        _check_items(f.schema, value)
    return value


def artifact_references(value: Any, known: frozenset[str] | set[str]) -> list[str]:
    """The session's artifact IDs named anywhere in ``value``, in order, once each."""
    found: dict[str, None] = {}

    def walk(item: Any) -> None:
        if isinstance(item, str):
            if item in known:
                found[item] = None
        elif isinstance(item, Mapping):
            for inner in item.values():
                walk(inner)
        elif isinstance(item, list):
            for inner in item:
                walk(inner)

    walk(value)
    return list(found)
