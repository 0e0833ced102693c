"""The workspace's params forms: generated from a processor's JSON schema, rendered escaped,
and read back into params checked by the same schema."""

from __future__ import annotations

import html
from types import SimpleNamespace
from typing import Any

import pytest

from ephemera.console.forms import (
    Field,
    artifact_references,
    build_form,
    initial_values,
    labels,
    read_form,
)
from ephemera.console.templating import env
from ephemera.processors.camera_calibration import CameraCalibrationParams
from ephemera.processors.roi_compare import RoiCompareParams

SCHEMA: dict[str, Any] = {
    "$defs": {
        "Box": {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "minimum": 0, "title": "X"},
                "width": {"type": "integer", "minimum": 1, "title": "Width"},
            },
            "required": ["x", "width"],
        }
    },
    "type": "object",
    "properties": {
        "label": {"type": "string", "minLength": 2, "maxLength": 8, "pattern": "^[a-z]+$"},
        "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1.5},
        "flag": {"type": "boolean", "default": True, "title": "Flag"},
        "method": {"type": "string", "enum": ["ncc", "ssim"], "default": "ncc"},
        "capture": {"type": "string", "description": "artifact ID of the image"},
        "goldens": {
            "type": "array",
            "items": {"type": "string"},
            "format": "artifact-id",
            "minItems": 1,
        },
        "box": {"$ref": "#/$defs/Box", "description": "where"},
        "pages": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None},
        "regions": {"type": "array", "items": {"$ref": "#/$defs/Box"}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    },
    "required": ["capture", "box"],
}
ARTIFACTS = ("a1", "a2", "a3")


def by_name(fields: list[Field]) -> dict[str, Field]:
    found: dict[str, Field] = {}
    for f in fields:
        found[f.name] = f
        found.update(by_name(list(f.children)))
    return found


def render(fields: list[Field], values: dict[str, Any], errors: dict[str, str]) -> str:
    template = env.from_string(
        '{% from "workspace/fields.html" import controls %}'
        "{{ controls(fields, values, errors, artifacts) }}"
    )
    artifacts = [SimpleNamespace(id=a, name=f"{a}.png", kind="input") for a in ARTIFACTS]
    return template.render(fields=fields, values=values, errors=errors, artifacts=artifacts)


def test_each_json_schema_type_gets_its_own_control() -> None:
    fields = by_name(build_form(SCHEMA))
    widgets = {name: f.widget for name, f in fields.items()}
    assert widgets == {
        "p.label": "text",
        "p.count": "integer",
        "p.ratio": "number",
        "p.flag": "checkbox",
        "p.method": "select",
        "p.capture": "artifact",
        "p.goldens": "artifacts",
        "p.box": "group",
        "p.box.x": "integer",
        "p.box.width": "integer",
        "p.pages": "integer",
        "p.regions": "json",
        "p.labels": "json",
        "p.either": "json",
    }
    assert fields["p.pages"].nullable
    assert fields["p.method"].options == ("ncc", "ssim")
    assert (fields["p.count"].minimum, fields["p.count"].maximum) == (1, 10)
    assert fields["p.box"].description == "where"  # the referring node's words win
    assert fields["p.box.x"].html_required  # required, inside a required group
    assert not fields["p.pages"].html_required


def test_a_control_is_named_by_its_label_within_its_groups() -> None:
    named = labels(build_form(SCHEMA))
    assert named["p.box.width"] == "box > Width"
    assert named["p.count"] == "count"


def test_the_rendered_controls_carry_labels_bounds_and_defaults() -> None:
    fields = build_form(SCHEMA)
    page = render(fields, initial_values(fields), {})
    assert '<label for="p-count">count</label>' in page
    assert 'type="number" id="p-count" name="p.count" value="3" step="1" min="1" max="10"' in page
    assert 'step="any" min="0" max="1.5"' in page  # the number, its exclusive bound as min
    assert 'id="p-flag" name="p.flag" value="true" checked' in page
    assert '<option value="ncc" selected>ncc</option>' in page
    assert '<option value="a2">a2.png (input, a2)</option>' in page  # capture's choices
    assert page.count('name="p.goldens"') == len(ARTIFACTS)  # a checkbox per artifact
    assert '<legend>box <span class="required">(required)</span></legend>' in page
    assert '"width": 0' in html.unescape(page)  # the example beside the regions' JSON


def test_hostile_titles_descriptions_and_choices_are_escaped() -> None:
    evil = '<script>alert("x")</script>'
    schema = {
        "type": "object",
        "properties": {
            '"><img src=x onerror=alert(1)>': {
                "type": "string",
                "title": evil,
                "description": evil,
            },
            "pick": {"type": "string", "enum": [evil, "b"]},
            "raw": {"type": "array", "items": {"type": "object"}, "default": [{"k": evil}]},
        },
    }
    fields = build_form(schema)
    page = render(fields, initial_values(fields), {"p.pick": evil})
    assert "<script>" not in page
    assert "<img" not in page
    assert page.count("&lt;script&gt;") >= 4  # label, description, option, error
    # The hostile property name stays inside its attributes, and its id is tamed.
    assert 'id="p-__' in page


def test_a_posted_form_becomes_typed_params() -> None:
    fields = build_form(SCHEMA)
    form = {
        "p.label": ["abc"],
        "p.count": ["4"],
        "p.ratio": ["0.25"],
        "p.method": ["ssim"],
        "p.capture": ["a1"],
        "p.goldens": ["a2", "a3"],
        "p.box.x": ["0"],
        "p.box.width": ["12"],
        "p.pages": [""],
        "p.regions": ['[{"x": 1, "width": 2}]'],
        "p.labels": ['{"a": "A"}'],
    }
    submission = read_form(fields, form, ARTIFACTS)
    assert submission.errors == {}
    assert submission.params == {
        "label": "abc",
        "count": 4,
        "ratio": 0.25,
        "flag": False,  # an unticked checkbox is a no
        "method": "ssim",
        "capture": "a1",
        "goldens": ["a2", "a3"],
        "box": {"x": 0, "width": 12},
        "regions": [{"x": 1, "width": 2}],
        "labels": {"a": "A"},
    }


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("p.label", "a", "at least 2 characters"),
        ("p.label", "abcdefghij", "at most 8 characters"),
        ("p.label", "ABC", "must match ^[a-z]+$"),
        ("p.count", "11", "at most 10"),
        ("p.count", "0", "at least 1"),
        ("p.count", "2.5", "a whole number"),
        ("p.ratio", "0", "more than 0"),
        ("p.ratio", "nan", "a finite number"),
        ("p.ratio", "x", "a number"),
        ("p.method", "orb", "choose one of: ncc, ssim"),
        ("p.capture", "not-mine", "not an artifact of this session"),
        ("p.goldens", "elsewhere", "not an artifact of this session: elsewhere"),
        ("p.box.width", "0", "at least 1"),
        ("p.regions", "[{", "not valid JSON: Expecting property name enclosed in double quotes"),
        ("p.labels", "[1]", "must be a JSON object"),
        ("p.pages", "0", "at least 1"),
    ],
)
def test_a_value_the_schema_refuses_is_named_beside_its_control(
    name: str, value: str, problem: str
) -> None:
    form = {"p.capture": ["a1"], "p.box.x": ["1"], "p.box.width": ["1"], name: [value]}
    submission = read_form(build_form(SCHEMA), form, ARTIFACTS)
    assert list(submission.errors) == [name]
    assert submission.errors[name].startswith(problem)
    # What was typed comes back in the control.
    shown = submission.values[name]
    assert shown == ([value] if name == "p.goldens" else value)


def test_required_values_are_required_and_optional_ones_left_to_their_defaults() -> None:
    submission = read_form(build_form(SCHEMA), {}, ARTIFACTS)
    assert submission.errors == {
        "p.capture": "required",
        "p.box.x": "required",
        "p.box.width": "required",
    }
    optional_group = {
        "type": "object",
        "properties": {
            "box": {
                "type": "object",
                "properties": {"x": {"type": "integer"}},
                "required": ["x"],
            }
        },
    }
    untouched = read_form(build_form(optional_group), {"p.box.x": [""]}, ())
    assert (untouched.params, untouched.errors) == ({}, {})
    half = read_form(build_form(optional_group), {"p.box.x": ["y"]}, ())
    assert half.errors == {"p.box.x": "a whole number"}


def test_the_builtin_schemas_make_usable_forms() -> None:
    roi = by_name(build_form(RoiCompareParams.model_json_schema()))
    assert roi["p.capture"].widget == "artifact"
    assert roi["p.regions"].widget == "json"
    calibration = by_name(build_form(CameraCalibrationParams.model_json_schema()))
    assert calibration["p.board"].widget == "group"
    assert calibration["p.board.columns"].widget == "integer"
    assert calibration["p.images"].widget == "artifacts"
    assert calibration["p.images"].nullable
    assert calibration["p.preview"].widget == "checkbox"


def test_the_artifacts_params_name_are_found_anywhere_in_them() -> None:
    params = {"capture": "a1", "regions": [{"goldens": ["a3", "a1"], "name": "a9"}]}
    assert artifact_references(params, {"a1", "a2", "a3"}) == ["a1", "a3"]
