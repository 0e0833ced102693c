"""What every command shares: consoles, options, opening the store, printing records.

The command modules import the library inside their commands, not at the top: ``--help``
and a command with nothing to do start without loading what they do not run.
"""

from __future__ import annotations

import gc
import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ephemera.errors import EphemeraError, StorageError

if TYPE_CHECKING:
    from ephemera.config import Settings
    from ephemera.deployment import Backends
    from ephemera.store import Store

# No markup on standard output: it shows what clients named (labels, file names, metadata),
# which must print as the text it is, never as styles or terminal links.
out = Console(markup=False)
# soft_wrap: a message stays one line however narrow the terminal (or log) is.
err = Console(stderr=True, soft_wrap=True)

# Exit codes, the same for every command.
EXIT_FAILED = 1  # the operation failed: not found, conflict, cleanup errors
EXIT_USAGE = 2  # bad flags or settings, no store, other backends than recorded: nothing touched
EXIT_UNAVAILABLE = 3  # a backend is unreachable or unusable: database, bucket, data dir

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory [default: $EPHEMERA_DATA_DIR or ./ephemera-data]"
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        help="Metadata database [default: $EPHEMERA_DATABASE_URL or SQLite in the data dir]",
    ),
]
BlobUrl = Annotated[
    str | None,
    typer.Option(
        "--blob-url",
        metavar="URL",
        help="Blob store [default: $EPHEMERA_BLOB_URL or a directory in the data dir]",
    ),
]
# ``ephemera --database-url URL COMMAND``: backends given before the command name, for every
# command (set by the root callback; a command's own flags win).
root_backends: dict[str, str | None] = {}
# True in the ``ephemera`` process itself (set by ``main``), not where an application or a
# test runs the commands in its own process: only there is the start-up heap the process's.
whole_process: list[bool] = []
ADMIN_KEY_FILE = "admin.key"
ACTOR = f"cli:{getpass.getuser()}"


def settings_for(
    data_dir: Path | None, *, database_url: str | None = None, blob_url: str | None = None
) -> Settings:
    """Flags, then ``ephemera --database-url/--blob-url``, then the environment and config."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from ephemera.config import Settings

    given: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url or root_backends.get("database_url"),
        "blob_url": blob_url or root_backends.get("blob_url"),
    }
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except (ValidationError, SettingsError) as exc:
        # A mistyped EPHEMERA_* variable is the operator's to fix: say which, not a traceback.
        problems = (
            [f"{_setting_name(e['loc'])}: {e['msg']}" for e in exc.errors()]
            if isinstance(exc, ValidationError)
            else [str(exc)]
        )
        raise usage_error("invalid settings: " + "; ".join(problems)) from None


def _setting_name(loc: tuple[int | str, ...]) -> str:
    name = f"EPHEMERA_{str(loc[0]).upper()}" if loc else "settings"
    return name + "".join(f"[{part}]" for part in loc[1:])


def announce(settings: Settings) -> Backends:
    """Say on standard error which backends the command uses (stdout stays for output)."""
    from ephemera.deployment import Backends

    backends = Backends.of(settings)
    err.print(f"ephemera: {backends.describe()}", markup=False, highlight=False)
    return backends


def open_store(
    data_dir: Path | None,
    *,
    database_url: str | None = None,
    blob_url: str | None = None,
    create: bool = False,
) -> Store:
    """The store the command works on; it is never created unless ``create`` says so."""
    with long_lived():
        from ephemera.deployment import check_record
        from ephemera.store import Store

        settings = settings_for(data_dir, database_url=database_url, blob_url=blob_url)
        backends = announce(settings)
        try:
            if not create:
                check_record(settings.data_dir, backends)
            return Store.open(settings, create=create)
        except EphemeraError as exc:
            raise fail(exc, EXIT_USAGE) from None


@contextmanager
def long_lived() -> Iterator[None]:
    """In the ``ephemera`` process, what the block builds lives until the process ends: the
    library's modules, the settings, the open store. The cyclic collector stays off while
    it is built (it would walk the growing heap again and again and find next to nothing)
    and then freezes it out of every later collection, the one at exit included: for a
    cleanup from cron with nothing to do, those walks were a large share of its time.
    Elsewhere a plain block."""
    if not whole_process or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


@contextmanager
def store_for(
    data_dir: Path | None, *, database_url: str | None = None, blob_url: str | None = None
) -> Iterator[Store]:
    """The existing store, open for the block; a library error in the block ends the command
    with its one-line message."""
    with open_store(data_dir, database_url=database_url, blob_url=blob_url) as store:
        try:
            yield store
        except EphemeraError as exc:
            raise fail(exc) from None


def fail(
    exc: EphemeraError, code: int = EXIT_FAILED, *, context: str = "", hint: str = ""
) -> typer.Exit:
    """Print the error on one line; a backend failure exits with EXIT_UNAVAILABLE."""
    message = context + exc.message + (f" ({hint})" if hint else "")
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(EXIT_UNAVAILABLE if isinstance(exc, StorageError) else code)


def usage_error(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


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
