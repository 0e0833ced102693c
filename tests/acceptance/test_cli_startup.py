"""The command starts without loading what it does not run: ``--help`` loads none of the
library, and a cleanup with nothing to do none of the web, client, image, document, S3 or
migration stacks (cron runs it every few minutes). Checked by the modules a real process
loaded, never by a timer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.cli import BACKEND_VARIABLES, ephemera

# Runs the command in this process as `python -m ephemera` would, then prints every module
# it loaded.
LOADED = """
import atexit, json, runpy, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["ephemera", *sys.argv[1:]]
runpy.run_module("ephemera", run_name="__main__")
"""

# Never needed to answer --help or to find nothing to clean.
SERVING_AND_EXTRAS = (
    "alembic",
    "mako",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "httpx2",
    "numpy",
    "PIL",
    "cv2",
    "pypdf",
    "fitz",
    "boto3",
    "botocore",
    "watchdog",
    "ephemera.http",
    "ephemera.console",
    "ephemera.client",
    "ephemera.importer",
    "ephemera.processors.roi_compare",
    "prometheus_client",  # only a scrape of /metrics renders the counts
    "sqlalchemy.dialects.postgresql",  # these stores are on SQLite
)
# The library itself: databases, settings, the store.
LIBRARY = ("sqlalchemy", "pydantic", "pydantic_settings", "ephemera.store", "ephemera.catalog")


# The same, printing what the cyclic collector was left with at exit instead.
COLLECTOR = """
import atexit, gc, json, runpy, sys
atexit.register(lambda: print(json.dumps([gc.get_freeze_count(), gc.isenabled()]), file=sys.stderr))
sys.argv = ["ephemera", *sys.argv[1:]]
runpy.run_module("ephemera", run_name="__main__")
"""


def run_printing(script: str, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1])


def loaded_by(*args: str) -> set[str]:
    modules: list[str] = run_printing(LOADED, *args)
    return set(modules)


def among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in modules))


def test_help_loads_none_of_the_library() -> None:
    modules = loaded_by("--help")
    assert "typer" in modules  # the check sees what the command loaded
    assert among(modules, SERVING_AND_EXTRAS + LIBRARY) == []


def test_a_cleanup_with_nothing_to_do_loads_only_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert ephemera("migrate", data_dir=data).returncode == 0

    modules = loaded_by("cleanup", "expired", "--data-dir", str(data))

    assert among(modules, LIBRARY) == sorted(LIBRARY)  # it did open the store
    assert among(modules, SERVING_AND_EXTRAS) == []


def test_a_command_freezes_the_heap_it_starts_with_and_collects_after(tmp_path: Path) -> None:
    """The library and the open store live until exit: no collection walks them again (the
    one at exit included), and the collector is on for what the command does next."""
    data = tmp_path / "data"
    assert ephemera("migrate", data_dir=data).returncode == 0

    frozen, collecting = run_printing(COLLECTOR, "cleanup", "expired", "--data-dir", str(data))

    assert frozen > 10_000  # the library's objects, not a handful
    assert collecting is True
