"""The processors' parameter reference is generated from their params' JSON schemas, and the
README holds exactly what `ephemera processors --markdown` prints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from ephemera.cli.app import app
from ephemera.cli.paramdocs import processors_markdown
from ephemera.processors import ProcessorInfo

README = Path(__file__).parents[2] / "README.md"
REGENERATE = (
    "the README's processor reference is stale: run `.venv-test/bin/ephemera processors "
    "--markdown` (every extra installed, EPHEMERA_PROCESSORS unset) and paste its output "
    "between <!-- processors:begin --> and <!-- processors:end -->"
)


class Corner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: int = Field(ge=0, description="from the left")
    y: int = Field(ge=0, description="from the top")


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=8, pattern="^[a-z]+$", description="a | b")
    corners: list[Corner] = Field(min_length=3, description="in order")
    anchor: Corner | None = Field(None, description="where it hangs")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shapes: list[Shape] = Field(max_length=5, description="what to draw")
    mode: Literal["fill", "outline"] = Field("fill", description="how")
    scale: float = Field(1.0, gt=0, le=10, description="zoom")
    names: list[str] | None = Field(None, description="optional names")
    weights: dict[str, float] = Field(default_factory=dict)


def rows(markdown: str) -> dict[str, list[str]]:
    """The table rows by param path: [type, default, description]."""
    found = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            found[cells[0].strip("`")] = cells[1:]
    return found


def test_nested_models_and_arrays_of_them_get_dotted_rows_with_refs_resolved() -> None:
    schema = Params.model_json_schema()
    assert "$defs" in schema  # the models are behind $ref: the rows must follow them
    table = rows(processors_markdown([ProcessorInfo("draw", "Draws.", schema, False)]))
    assert list(table) == [
        "shapes",
        "shapes[].label",
        "shapes[].corners",
        "shapes[].corners[].x",
        "shapes[].corners[].y",
        "shapes[].anchor",
        "shapes[].anchor.x",
        "shapes[].anchor.y",
        "mode",
        "scale",
        "names",
        "weights",
    ]
    assert table["shapes"] == ["array of objects, at most 5 items, required", "", "what to draw"]
    assert table["shapes[].corners"][0] == "array of objects, at least 3 items, required"
    assert table["shapes[].corners[].x"] == ["integer ≥ 0, required", "", "from the left"]
    assert table["shapes[].anchor"] == ["object, or null", "`null`", "where it hangs"]
    assert table["mode"] == ['one of `"fill"`, `"outline"`', '`"fill"`', "how"]
    assert table["scale"] == ["number > 0, ≤ 10", "`1.0`", "zoom"]
    assert table["names"][0] == "array of strings, or null"
    assert table["weights"][0] == "object of number"


def test_a_pipe_in_a_description_or_pattern_stays_inside_its_cell() -> None:
    schema = Params.model_json_schema()
    text = processors_markdown([ProcessorInfo("draw", None, schema, False)])
    label = rows(text)["shapes[].label"]
    assert label[0] == "string, 1 to 8 characters matching `^[a-z]+$`, required"
    assert label[2] == "a \\| b"


def test_a_processor_without_params_or_with_external_workers_says_so() -> None:
    empty: dict[str, Any] = {"type": "object", "properties": {}}
    text = processors_markdown(
        [
            ProcessorInfo("noop", "Does nothing.\n  At all.", empty, False),
            ProcessorInfo("thumbnail-go", None, None, True),
        ]
    )
    assert "#### `noop`\n\nDoes nothing. At all.\n\nNo params.\n" in text
    assert "#### `thumbnail-go`\n\nRun by external workers, which check its params.\n" in text


def test_the_command_prints_the_reference_of_every_enabled_processor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EPHEMERA_PROCESSORS", '["roi-compare"]')
    monkeypatch.setenv("EPHEMERA_EXTERNAL_PROCESSORS", '["thumbnail-go"]')
    done = CliRunner().invoke(app, ["processors", "--markdown"])
    assert done.exit_code == 0, done.output
    headings = re.findall(r"^#### `(.*)`$", done.stdout, re.M)
    assert headings == ["roi-compare", "thumbnail-go"]
    assert "| `regions[].box.width` | integer ≥ 1, required |" in done.stdout


def test_the_readme_holds_exactly_the_generated_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # As the regenerating command runs: the default processors, those of every extra.
    monkeypatch.delenv("EPHEMERA_PROCESSORS", raising=False)
    monkeypatch.delenv("EPHEMERA_EXTERNAL_PROCESSORS", raising=False)
    done = CliRunner().invoke(app, ["processors", "--markdown"])
    assert done.exit_code == 0, done.output
    [block] = re.findall(
        r"<!-- processors:begin -->\n(.*?)<!-- processors:end -->", README.read_text(), re.S
    )
    assert block == done.stdout, REGENERATE
