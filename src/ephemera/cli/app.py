"""The command groups; each command lives in the module of its concept."""

from __future__ import annotations

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="ephemera: isolated, self-cleaning session workspaces.",
)
sessions_app = typer.Typer(no_args_is_help=True, help="Inspect and close sessions.")
keys_app = typer.Typer(no_args_is_help=True, help="Manage admin keys.")
worker_keys_app = typer.Typer(no_args_is_help=True, help="Manage keys of external workers.")
client_keys_app = typer.Typer(
    no_args_is_help=True, help="Manage keys of client apps (they may only create sessions)."
)
app.add_typer(sessions_app, name="sessions")
app.add_typer(keys_app, name="admin-key")
app.add_typer(worker_keys_app, name="worker-key")
app.add_typer(client_keys_app, name="client-key")
