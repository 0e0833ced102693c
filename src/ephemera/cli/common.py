"""What every command shares: consoles, options, opening the store, printing records."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape

from ephemera.config import Settings
from ephemera.errors import EphemeraError
from ephemera.store import Store

out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory [default: $EPHEMERA_DATA_DIR or ./ephemera-data]"
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
ADMIN_KEY_FILE = "admin.key"
ACTOR = f"cli:{getpass.getuser()}"


def settings_for(data_dir: Path | None) -> Settings:
    try:
        return Settings(data_dir=data_dir) if data_dir is not None else Settings()
    except (ValidationError, SettingsError) as exc:
        # A mistyped EPHEMERA_* variable is the operator's to fix: say which, not a traceback.
        problems = (
            [f"{_setting_name(e['loc'])}: {e['msg']}" for e in exc.errors()]
            if isinstance(exc, ValidationError)
            else [str(exc)]
        )
        text = escape("; ".join(problems))
        err.print(f"[red]error:[/red] invalid settings: {text}", soft_wrap=True)
        raise typer.Exit(2) from None


def _setting_name(loc: tuple[int | str, ...]) -> str:
    name = f"EPHEMERA_{str(loc[0]).upper()}" if loc else "settings"
    return name + "".join(f"[{part}]" for part in loc[1:])


def open_store(data_dir: Path | None) -> Store:
    try:
        return Store.open(settings_for(data_dir))
    except EphemeraError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None


def fail(exc: EphemeraError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc.message}")
    return typer.Exit(1)


def jsonable(obj: Any) -> Any:
    if hasattr(obj, "__slots__"):
        return {k: jsonable(getattr(obj, k)) for k in obj.__slots__}
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, list):
        return [jsonable(x) for x in obj]
    return obj


def write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
