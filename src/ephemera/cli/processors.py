"""``ephemera processors``: what tasks may run, from the settings alone (no backend is opened)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ephemera.cli.app import app
from ephemera.cli.common import AsJson, DataDir, err, jsonable, out, settings_for
from ephemera.errors import EphemeraError
from ephemera.extras import needs

if TYPE_CHECKING:
    from ephemera.config import Settings
    from ephemera.processors import ProcessorInfo, Registry


def load_processors(settings: Settings) -> Registry:
    """The enabled processors, loaded now; exit 2 with one line if one cannot be."""
    from ephemera.processors import ProcessorUnavailable, Registry

    try:
        return Registry.load(settings.processors, external=settings.external_processors)
    except ProcessorUnavailable as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)} (EPHEMERA_PROCESSORS)", soft_wrap=True)
        raise typer.Exit(2) from None


def note_lacking_extras(registry: Registry) -> None:
    """One line per extra naming the default built-ins left out for want of it."""
    for extra in sorted(set(registry.lacking_extra.values())):
        names = ", ".join(sorted(n for n, e in registry.lacking_extra.items() if e == extra))
        feature = f"built-in processors not enabled ({names}): each"
        err.print(f"note: {escape(needs(extra, feature))}", soft_wrap=True)


def check_processors(settings: Settings) -> None:
    """Before a server or worker starts (and creates anything): never run without a processor
    that was asked for."""
    registry = load_processors(settings)
    enabled = registry.enabled()
    err.print(f"processors enabled: {escape(', '.join(enabled)) or 'none'}", soft_wrap=True)
    note_lacking_extras(registry)


def _params_summary(schema: dict[str, Any] | None) -> str:
    if schema is None:
        return "(checked by its external workers)"
    required = set(schema.get("required", ()))
    names = [f"{p}*" if p in required else p for p in schema.get("properties", {})]
    return ", ".join(names)


def _first_sentence(text: str | None) -> str:
    flat = " ".join((text or "").split())
    return flat.split(". ")[0].removesuffix(".")


@app.command("processors")
def processors(
    name: Annotated[str | None, typer.Argument(help="Show only this processor")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
    markdown: Annotated[
        bool,
        typer.Option(
            "--markdown",
            help="Print each processor's description and a table of its params, as Markdown",
        ),
    ] = False,
) -> None:
    """The processors tasks may use here (EPHEMERA_PROCESSORS), with their params' JSON schema.

    Reads the settings only: no database or blob store is opened.
    """
    if as_json and markdown:
        err.print("[red]error:[/red] --json and --markdown exclude each other")
        raise typer.Exit(2)
    registry = load_processors(settings_for(data_dir))
    note_lacking_extras(registry)
    try:
        infos: list[ProcessorInfo] = (
            registry.describe() if name is None else [registry.describe_one(name)]
        )
    except EphemeraError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(jsonable(infos if name is None else infos[0])))
        return
    if markdown:
        from ephemera.cli.paramdocs import processors_markdown

        # Plain text, never wrapped to the terminal: it is pasted into the README as it is.
        sys.stdout.write(processors_markdown(infos))
        return
    if name is not None:
        (info,) = infos
        out.print(Text(info.name, style="bold") + (" (external)" if info.external else ""))
        if info.description:
            out.print(info.description, highlight=False)
        if info.params_schema is not None:
            out.print_json(data=info.params_schema)
        return
    table = Table("name", "params (* required)", "description")
    for info in infos:
        table.add_row(
            info.name,
            _params_summary(info.params_schema),
            _first_sentence(info.description),
        )
    out.print(table)
