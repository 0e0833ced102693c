"""The command groups; each command lives in the module of its concept."""

from __future__ import annotations

from typing import Annotated

import typer

from ephemera.cli.common import BlobUrl, DatabaseUrl, root_backends

# Plain help: typer's rich help labels every option with its type, flags included
# ("--dry-run <bool>"), while the plain formatter follows click and shows none for flags.
HELP_STYLE = None

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=HELP_STYLE,
)
sessions_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=HELP_STYLE, help="Inspect and close sessions."
)
keys_app = typer.Typer(no_args_is_help=True, rich_markup_mode=HELP_STYLE, help="Manage admin keys.")
worker_keys_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=HELP_STYLE, help="Manage keys of external workers."
)
client_keys_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
    help="Manage keys of client apps (they may only create sessions).",
)
link_keys_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=HELP_STYLE,
    help="Manage the keys that sign download links.",
)
app.add_typer(sessions_app, name="sessions")
app.add_typer(keys_app, name="admin-key")
app.add_typer(worker_keys_app, name="worker-key")
app.add_typer(client_keys_app, name="client-key")
app.add_typer(link_keys_app, name="link-key")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"ephemera {version('ephemera')}")
        raise typer.Exit()


@app.callback()
def root(
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """ephemera: isolated, self-cleaning session workspaces.

    Exit codes: 0 done; 1 the operation failed; 2 bad flags or settings, no store, or other
    backends than the data dir's deployment recorded (nothing was touched); 3 a backend is
    unreachable or unusable.
    """
    root_backends.update(database_url=database_url, blob_url=blob_url)
