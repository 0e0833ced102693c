"""Optional dependency groups: a feature whose extra is missing is refused with the extra to
install, and the built-in processors it would need are left out of the default.

Here every extra is installed; a missing one is simulated by pointing its check at a module
that does not exist. tests/acceptance/test_lean_install.py proves the same on a real install
without them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ephemera import InvalidInput, Settings, Store
from ephemera import extras as extras_module
from ephemera.blobs import open_blob_store
from ephemera.catalog import Catalog
from ephemera.cli import app
from ephemera.errors import MissingExtra, NotFound
from ephemera.extras import EXTRAS, missing, needs, require
from ephemera.http import create_app
from ephemera.processors import BUILTINS, ProcessorUnavailable, Registry
from tests.conftest import BUILTIN_PROCESSORS, bearer

API = "/api/v1"
VISION = "needs the 'vision' extra: pip install 'ephemera[vision]'"


def uninstall(monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    monkeypatch.setitem(EXTRAS, extra, ("ephemera_no_such_module",))


def listed(extra: str) -> str:
    """The built-ins of ``extra`` as a message lists them."""
    return ", ".join(sorted(n for n, b in BUILTINS.items() if b.extra == extra))


def uninstall_builtin_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-ins' extras (vision, documents), so that no built-in is left enabled."""
    for extra in sorted({builtin.extra for builtin in BUILTINS.values()}):
        uninstall(monkeypatch, extra)


def test_every_extra_is_installed_for_the_tests() -> None:
    """The guard of the tests below: what they simulate missing is really here otherwise."""
    assert {extra: missing(extra) for extra in EXTRAS} == {e: [] for e in EXTRAS}
    assert {b.extra for b in BUILTINS.values()} <= EXTRAS.keys()
    for extra in EXTRAS:
        require(extra, "anything")


def test_the_core_imports_no_module_of_an_extra() -> None:
    """Every face and the whole library load without them: only a feature that needs one
    (a built-in processor, the S3 store, PostgreSQL) imports it, when it is chosen."""
    modules = sorted({m for names in EXTRAS.values() for m in names})
    code = (
        "import sys\n"
        "import ephemera, ephemera.cli, ephemera.http, ephemera.service, ephemera.worker\n"
        "from ephemera.processors import Registry\n"
        "Registry.load([])\n"
        f"print(sorted(m for m in {modules!r} if m in sys.modules))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert shown.stdout.strip() == "[]"


def test_require_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall(monkeypatch, "s3")
    assert missing("s3") == ["ephemera_no_such_module"]
    with pytest.raises(MissingExtra) as raised:
        require("s3", "The S3 blob store")
    assert raised.value.message == (
        "The S3 blob store needs the 's3' extra: pip install 'ephemera[s3]'"
    )
    assert isinstance(raised.value, InvalidInput)
    assert extras_module.needs("s3", "It") == "It needs the 's3' extra: pip install 'ephemera[s3]'"


def test_an_s3_blob_url_without_the_s3_extra_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall(monkeypatch, "s3")
    with pytest.raises(MissingExtra, match=r"pip install 'ephemera\[s3\]'"):
        open_blob_store("s3://bucket/prefix")


def test_a_postgresql_url_without_the_postgres_extra_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uninstall(monkeypatch, "postgres")
    with pytest.raises(MissingExtra) as raised:
        Catalog.open("postgresql+psycopg://user@127.0.0.1:1/db", create=False)
    assert raised.value.message == (
        "PostgreSQL needs the 'postgres' extra: pip install 'ephemera[postgres]'"
    )


def test_the_embedded_default_needs_no_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for extra in EXTRAS:
        uninstall(monkeypatch, extra)
    with Store.open(Settings(data_dir=tmp_path / "data")) as store:
        sid = store.create_session().session.id
        artifact = store.put_artifact(sid, b"bytes", name="a.txt")
        assert store.read_artifact(sid, artifact.id) == b"bytes"
        assert store.close_session(sid)


# -- the built-in processors ----------------------------------------------------------------------


def test_by_default_the_builtins_without_their_extra_are_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uninstall_builtin_extras(monkeypatch)
    registry = Registry.load()
    assert list(registry) == []
    assert registry.enabled() == []
    assert registry.lacking_extra == {name: BUILTINS[name].extra for name in BUILTIN_PROCESSORS}
    assert set(registry.lacking_extra.values()) == {"vision", "documents"}
    with pytest.raises(InvalidInput) as refused:
        registry.validate("roi-compare", {}, [])
    assert (
        refused.value.message == f"processor 'roi-compare' is not enabled: it {VISION} (enabled: )"
    )
    with pytest.raises(NotFound, match=r"ephemera\[vision\]"):
        registry.describe_one("camera-calibration")
    # Any other name gets the usual answer.
    with pytest.raises(InvalidInput) as other:
        registry.validate("thumbnail", {}, [])
    assert other.value.message == "processor 'thumbnail' is not enabled (enabled: )"


def test_external_processors_are_still_enabled_without_the_vision_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uninstall_builtin_extras(monkeypatch)
    registry = Registry.load(external=["thumbnail-go"])
    assert registry.enabled() == ["thumbnail-go"]
    with pytest.raises(InvalidInput) as refused:
        registry.validate("roi-compare", {}, [])
    assert refused.value.message == (
        f"processor 'roi-compare' is not enabled: it {VISION} (enabled: thumbnail-go)"
    )


@pytest.mark.parametrize("name", BUILTIN_PROCESSORS)
def test_a_builtin_named_in_the_settings_without_its_extra_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    extra = BUILTINS[name].extra
    uninstall(monkeypatch, extra)
    with pytest.raises(ProcessorUnavailable) as raised:
        Registry.load([name])
    assert raised.value.message == needs(extra, f"processor {name!r}")
    assert raised.value.message.endswith(f"pip install 'ephemera[{extra}]'")


def test_named_explicitly_the_builtins_are_never_remembered_as_lacking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uninstall_builtin_extras(monkeypatch)
    registry = Registry.load([])
    assert registry.lacking_extra == {}
    with pytest.raises(InvalidInput) as refused:
        registry.validate("roi-compare", {}, [])
    assert refused.value.message == "processor 'roi-compare' is not enabled (enabled: )"


def test_a_task_for_a_builtin_without_its_extra_is_refused_over_http_with_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uninstall_builtin_extras(monkeypatch)
    with (
        Store.open(Settings(data_dir=tmp_path / "data")) as store,
        TestClient(create_app(store)) as client,
    ):
        token = store.create_session("s1").token
        assert client.get(f"{API}/processors").json()["items"] == []
        answer = client.post(
            f"{API}/sessions/s1/tasks",
            json={"processor": "roi-compare", "params": {}},
            headers=bearer(token),
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["message"] == (
            f"processor 'roi-compare' is not enabled: it {VISION} (enabled: )"
        )
        described = client.get(f"{API}/processors/camera-calibration")
        assert described.status_code == 404
        assert "pip install 'ephemera[vision]'" in described.json()["error"]["message"]
        assert client.get(f"{API}/sessions/s1/tasks", headers=bearer(token)).json()["items"] == []


def test_the_processors_command_names_the_extra_of_the_builtins_it_leaves_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uninstall_builtin_extras(monkeypatch)
    monkeypatch.delenv("EPHEMERA_PROCESSORS", raising=False)
    shown = CliRunner().invoke(app, ["processors", "--json", "--data-dir", str(tmp_path / "d")])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.strip() == "[]"
    assert shown.stderr.splitlines() == [
        f"note: built-in processors not enabled ({listed(extra)}): each "
        f"needs the {extra!r} extra: pip install 'ephemera[{extra}]'"
        for extra in ("documents", "vision")
    ]


def test_a_builtin_named_without_its_extra_stops_the_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uninstall_builtin_extras(monkeypatch)
    monkeypatch.setenv("EPHEMERA_PROCESSORS", '["roi-compare"]')
    shown = CliRunner().invoke(app, ["processors", "--data-dir", str(tmp_path / "d")])
    assert shown.exit_code == 2
    assert shown.stdout == ""
    assert shown.stderr.splitlines() == [
        f"error: processor 'roi-compare' {VISION} (EPHEMERA_PROCESSORS)"
    ]
