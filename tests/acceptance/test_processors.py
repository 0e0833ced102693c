"""Which processors run, and how they are described: enabled by the settings, never by what
happens to be installed; listed with their params' JSON schema by the library, the HTTP API
and the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from ephemera import InvalidInput, Settings, Store
from ephemera.http import create_app
from ephemera.models import TaskState
from ephemera.processors import ENTRY_POINT_GROUP, ProcessorUnavailable, Registry
from ephemera.processors.camera_calibration import CameraCalibrationParams
from ephemera.processors.documents.extract import PdfExtractParams
from ephemera.processors.documents.form_fill import PdfFormFillParams
from ephemera.processors.documents.reconcile import BolReconcileParams
from ephemera.processors.image_catalog import ImageCatalogParams
from ephemera.processors.roi_compare import RoiCompareParams
from ephemera.worker import Worker
from tests.conftest import (
    BUILTIN_PROCESSORS,
    BUILTINS_LISTED,
    WITH_SAMPLES,
    WITH_SAMPLES_ENV,
    bearer,
    free_port,
    snapshot,
)

API = "/api/v1"
README = Path(__file__).parents[2] / "README.md"
BUILTIN_SCHEMAS = {
    "bol-reconcile": BolReconcileParams.model_json_schema(),
    "camera-calibration": CameraCalibrationParams.model_json_schema(),
    "image-catalog": ImageCatalogParams.model_json_schema(),
    "pdf-extract": PdfExtractParams.model_json_schema(),
    "pdf-form-fill": PdfFormFillParams.model_json_schema(),
    "roi-compare": RoiCompareParams.model_json_schema(),
}
NOT_ENABLED_BY_DEFAULT = f"processor 'sample-sleep' is not enabled (enabled: {BUILTINS_LISTED})"


def test_the_sample_package_is_installed_here() -> None:
    """The guard of the tests below: what they keep out is really installed."""
    assert {"sample-sleep", "sample-upper"} <= set(entry_points(group=ENTRY_POINT_GROUP).names)


# -- the library: enabling ----------------------------------------------------------------------


def test_by_default_only_the_builtins_are_enabled() -> None:
    assert Settings().processors is None
    registry = Registry.load()
    assert sorted(registry) == BUILTIN_PROCESSORS
    assert registry.enabled() == BUILTIN_PROCESSORS


def test_an_installed_processor_runs_only_where_the_settings_name_it() -> None:
    registry = Registry.load(["sample-upper"])
    assert list(registry) == ["sample-upper"]
    assert type(registry["sample-upper"]).__module__ == "ephemera_sample"


def test_a_disabled_processor_is_refused_at_submission_naming_the_enabled_ones(
    data_dir: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    with Store.open(Settings(data_dir=data_dir)) as store:
        store.create_session("s1")
        before = snapshot(store)
        with pytest.raises(InvalidInput) as refused:
            store.submit_task("s1", "sample-sleep", params={"journal": str(journal)})
        assert refused.value.message == NOT_ENABLED_BY_DEFAULT
        # An unknown name gets the same answer: a client learns nothing of what is installed.
        with pytest.raises(InvalidInput) as unknown:
            store.submit_task("s1", "no-such-thing")
        assert unknown.value.message == (
            f"processor 'no-such-thing' is not enabled (enabled: {BUILTINS_LISTED})"
        )
        assert snapshot(store) == before
    assert not journal.exists()


def test_the_sample_processor_takes_no_file_path_even_where_enabled(
    data_dir: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    with Store.open(Settings(data_dir=data_dir, processors=WITH_SAMPLES)) as store:
        store.create_session("s1")
        before = snapshot(store)
        with pytest.raises(InvalidInput, match="journal: Extra inputs are not permitted"):
            store.submit_task("s1", "sample-sleep", params={"journal": str(journal)})
        assert snapshot(store) == before
    assert not journal.exists()


def test_a_worker_claims_only_the_processors_its_settings_enable(data_dir: Path) -> None:
    with Store.open(Settings(data_dir=data_dir, processors=WITH_SAMPLES)) as enabling:
        enabling.create_session("s1")
        task = enabling.submit_task("s1", "sample-upper")
        with Store.open(Settings(data_dir=data_dir)) as default:
            assert not Worker(default, name="builtins-only").run_one()
        assert enabling.get_task("s1", task.id).state is TaskState.PENDING
        assert Worker(enabling, name="with-samples").run_one()
        assert enabling.get_task("s1", task.id).state is TaskState.SUCCEEDED


def test_an_enabled_name_that_nothing_installed_provides_fails_with_one_clear_message() -> None:
    with pytest.raises(ProcessorUnavailable) as missing:
        Registry.load(["roi-compare", "thumbnail"])
    assert missing.value.message == (
        "processor 'thumbnail' is enabled but no installed package provides it "
        f"(installed: {', '.join(WITH_SAMPLES)})"
    )


@pytest.fixture
def odd_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution whose entry points are broken in every way a plugin can be."""
    site = tmp_path / "site"
    info = site / "ephemera_odd-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ephemera-odd\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ephemera.processors]\n"
        "broken-import = ephemera_odd_broken:processor\n"
        "misnamed = ephemera_sample:upper\n"
        "not-a-processor = builtins:dict\n"
        "sample-upper = ephemera_sample:upper\n"
    )
    (site / "ephemera_odd_broken.py").write_text('raise ImportError("libthumb.so is missing")\n')
    monkeypatch.syspath_prepend(str(site))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "broken-import",
            "processor 'broken-import' (ephemera_odd_broken:processor) could not be loaded: "
            "ImportError: libthumb.so is missing",
        ),
        (
            "misnamed",
            "entry point 'misnamed' (ephemera_sample:upper) gives a processor named 'sample-upper'",
        ),
        (
            "not-a-processor",
            "processor 'not-a-processor' (builtins:dict) is not a processor "
            "(name, params_model, run)",
        ),
        ("sample-upper", "processor 'sample-upper' is enabled but two packages do"),
    ],
)
@pytest.mark.usefixtures("odd_plugins")
def test_an_enabled_processor_that_cannot_be_loaded_is_named_with_the_reason(
    name: str, message: str
) -> None:
    with pytest.raises(ProcessorUnavailable) as unavailable:
        Registry.load(["roi-compare", name])
    assert unavailable.value.message.startswith(message)
    # Not named, they are never imported: the built-ins alone load as ever.
    assert sorted(Registry.load()) == BUILTIN_PROCESSORS


def test_external_processors_are_enabled_and_listed_without_a_schema() -> None:
    registry = Registry.load(["roi-compare"], external=["thumbnail-go"])
    assert list(registry) == ["roi-compare"]  # what embedded workers claim
    assert registry.enabled() == ["roi-compare", "thumbnail-go"]
    assert [(p.name, p.external, p.params_schema is None) for p in registry.describe()] == [
        ("roi-compare", False, False),
        ("thumbnail-go", True, True),
    ]


# -- the HTTP API -------------------------------------------------------------------------------


@pytest.fixture
def make_client(data_dir: Path) -> Iterator[Any]:
    opened: list[tuple[Store, TestClient]] = []

    def make(**settings: Any) -> tuple[Store, TestClient]:
        store = Store.open(Settings(data_dir=data_dir, **settings))
        client = TestClient(create_app(store))
        opened.append((store, client))
        return store, client

    yield make
    for store, client in opened:
        client.close()
        store.close()


def test_the_processor_list_needs_no_credential_and_shows_exactly_the_builtins_by_default(
    make_client: Any,
) -> None:
    _, client = make_client()
    answer = client.get(f"{API}/processors")
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert [p["name"] for p in items] == BUILTIN_PROCESSORS
    for item in items:
        assert item["params_schema"] == BUILTIN_SCHEMAS[item["name"]]
        assert item["external"] is False
        assert item["description"]
    # Every parameter is described in the schema itself.
    schemas = {item["name"]: item["params_schema"] for item in items}
    roi = schemas["roi-compare"]
    assert all("description" in p for p in roi["$defs"]["Region"]["properties"].values())
    catalog = schemas["image-catalog"]["properties"]
    assert all("description" in p for p in catalog.values())


def test_the_processor_list_shows_the_enabled_plugins_and_external_processors(
    make_client: Any,
) -> None:
    _, client = make_client(processors=WITH_SAMPLES, external_processors=["thumbnail-go"])
    items = {p["name"]: p for p in client.get(f"{API}/processors").json()["items"]}
    assert sorted(items) == sorted([*WITH_SAMPLES, "thumbnail-go"])
    assert items["sample-sleep"]["description"] == (
        "Writes an output naming its process, sleeps (checking for cancellation), succeeds."
    )
    assert set(items["sample-sleep"]["params_schema"]["properties"]) == {"seconds"}
    assert items["thumbnail-go"] == {
        "name": "thumbnail-go",
        "description": None,
        "params_schema": None,
        "external": True,
    }


def test_one_processor_is_described_by_name(make_client: Any) -> None:
    _, client = make_client()
    answer = client.get(f"{API}/processors/camera-calibration")
    assert answer.status_code == 200, answer.text
    assert answer.json()["params_schema"] == BUILTIN_SCHEMAS["camera-calibration"]


def test_submitting_sample_sleep_with_a_file_path_to_a_default_server_is_refused(
    make_client: Any, tmp_path: Path
) -> None:
    store, client = make_client()
    admin = bearer(store.create_key("ops"))
    token = client.post(f"{API}/sessions", json={"id": "s1"}, headers=admin).json()["token"]
    journal = tmp_path / "journal"
    before = snapshot(store)
    answer = client.post(
        f"{API}/sessions/s1/tasks",
        json={"processor": "sample-sleep", "params": {"seconds": 600, "journal": str(journal)}},
        headers=bearer(token),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == {"code": "invalid_input", "message": NOT_ENABLED_BY_DEFAULT}
    assert snapshot(store) == before
    assert not journal.exists()


def test_a_bad_params_422_lists_every_problem_at_once(make_client: Any) -> None:
    store, client = make_client()
    admin = bearer(store.create_key("ops"))
    token = client.post(f"{API}/sessions", json={"id": "s1"}, headers=admin).json()["token"]
    before = snapshot(store)
    params = {
        "capture": "",
        "regions": [
            {
                "name": "-bad",
                "box": {"x": -1, "y": 0, "width": 0, "height": 10},
                "goldens": [],
                "method": "sad",
                "threshold": 2,
                "colour": "red",
            }
        ],
    }
    answer = client.post(
        f"{API}/sessions/s1/tasks",
        json={"processor": "roi-compare", "params": params},
        headers=bearer(token),
    )
    assert answer.status_code == 422, answer.text
    message = answer.json()["error"]["message"]
    assert message.startswith("invalid params for roi-compare: ")
    problems = message.removeprefix("invalid params for roi-compare: ").split("; ")
    assert [p.split(":")[0] for p in problems] == [
        "capture",
        "regions.0.name",
        "regions.0.box.x",
        "regions.0.box.width",
        "regions.0.goldens",
        "regions.0.method",
        "regions.0.threshold",
        "regions.0.colour",
    ]
    assert snapshot(store) == before


def test_a_malformed_task_request_lists_every_problem_at_once(make_client: Any) -> None:
    store, client = make_client()
    admin = bearer(store.create_key("ops"))
    token = client.post(f"{API}/sessions", json={"id": "s1"}, headers=admin).json()["token"]
    before = snapshot(store)
    body = {
        "processor": "",
        "inputs": ["x" * 37, 5],
        "params": [],
        "max_attempts": 0,
        "reference_tokens": {"s2": 7},
        "priority": 9,
        "deadline": "soon",
    }
    answer = client.post(f"{API}/sessions/s1/tasks", json=body, headers=bearer(token))
    assert answer.status_code == 422, answer.text
    where = [p.split(":")[0] for p in answer.json()["error"]["message"].split("; ")]
    # More than the five the handler once stopped at.
    assert {"processor", "params", "max_attempts", "reference_tokens.s2", "priority"} <= set(where)
    assert "deadline" in where
    assert len(where) > 5
    assert snapshot(store) == before


# -- the README's examples ----------------------------------------------------------------------


def readme_examples() -> list[dict[str, Any]]:
    """Every task submission of the README: JSON blocks, and the bodies its curl commands send."""
    text = README.read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    for shell in re.findall(r"```sh\n(.*?)```", text, re.S):
        blocks += re.findall(r"-d '(\{.*?\})'", shell, re.S)
    bodies = [json.loads(block) for block in blocks]
    return [b for b in bodies if isinstance(b, dict) and "processor" in b]


def test_the_readmes_examples_validate_against_the_served_schemas(make_client: Any) -> None:
    _, client = make_client()
    listed = client.get(f"{API}/processors").json()["items"]
    served = {p["name"]: p["params_schema"] for p in listed}
    examples = readme_examples()
    # The curl command of "Tasks and processors", and one per built-in.
    assert len(examples) == len(BUILTIN_PROCESSORS) + 1
    assert sorted({e["processor"] for e in examples}) == BUILTIN_PROCESSORS
    for example in examples:
        schema = served[example["processor"]]
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(example["params"], schema, cls=jsonschema.Draft202012Validator)
        # And the check a submission really runs accepts it too.
        registry = Registry.load()
        registry[example["processor"]].params_model.model_validate(example["params"])
        # The schema is not a rubber stamp: a misspelt parameter in the example fails it.
        wrong = {**example["params"], "thresold": 0.9}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema, cls=jsonschema.Draft202012Validator)


# -- the command line ---------------------------------------------------------------------------


def ephemera(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ephemera", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_the_processors_command_lists_the_enabled_ones_without_opening_a_backend(
    data_dir: Path,
) -> None:
    listed = ephemera("processors", "--json", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert [(p["name"], p["params_schema"]) for p in items] == [
        (name, BUILTIN_SCHEMAS[name]) for name in BUILTIN_PROCESSORS
    ]
    table = ephemera("processors", "--data-dir", str(data_dir))
    assert table.returncode == 0, table.stderr
    assert "capture*, regions*" in table.stdout
    assert "board*, square_size, images, min_images, preview" in table.stdout
    assert not data_dir.exists()


def test_the_processors_command_shows_enabled_plugins_and_one_processor_by_name() -> None:
    listed = ephemera("processors", "--json", env=WITH_SAMPLES_ENV)
    assert [p["name"] for p in json.loads(listed.stdout)] == WITH_SAMPLES
    one = ephemera("processors", "sample-upper", "--json", env=WITH_SAMPLES_ENV)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["params_schema"]["properties"].keys() == {"suffix"}


@pytest.mark.parametrize("name", ["sample-sleep", "../../etc/passwd", "a\x1b[31mb", "x" * 5000])
def test_the_processors_command_refuses_a_name_that_is_not_enabled(
    data_dir: Path, name: str
) -> None:
    shown = ephemera("processors", name, "--data-dir", str(data_dir))
    assert shown.returncode == 1
    assert shown.stdout == ""
    assert f"is not enabled (enabled: {BUILTINS_LISTED})" in shown.stderr
    assert "\x1b[31m" not in shown.stderr
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("roi-compare", "invalid settings: EPHEMERA_PROCESSORS: Input should be a valid list"),
        ('["roi-compare", 3]', "EPHEMERA_PROCESSORS[1]: Input should be a valid string"),
        ('["thumbnail"]', "processor 'thumbnail' is enabled but no installed package provides"),
    ],
)
def test_a_bad_processors_setting_is_one_clear_line(
    data_dir: Path, value: str, message: str
) -> None:
    shown = ephemera("processors", "--data-dir", str(data_dir), env={"EPHEMERA_PROCESSORS": value})
    assert shown.returncode == 2
    assert message in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1
    assert "Traceback" not in shown.stderr
    assert not data_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["serve", "--port", str(free_port())], ["worker"]])
def test_serve_and_worker_refuse_to_start_without_a_processor_they_were_told_to_run(
    data_dir: Path, command: list[str]
) -> None:
    started = ephemera(
        *command,
        "--data-dir",
        str(data_dir),
        env={"EPHEMERA_PROCESSORS": '["roi-compare", "thumbnail"]'},
    )
    assert started.returncode == 2
    assert (
        "error: processor 'thumbnail' is enabled but no installed package provides it"
        in started.stderr
    )
    assert not data_dir.exists()  # refused before anything was created
