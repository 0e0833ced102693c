"""``ephemera admin-key`` and ``ephemera worker-key``: create, list and revoke keys."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ephemera.cli import render
from ephemera.cli.app import keys_app, worker_keys_app
from ephemera.cli.common import (
    ACTOR,
    AsJson,
    BlobUrl,
    DatabaseUrl,
    DataDir,
    err,
    fail,
    jsonable,
    open_store,
    out,
)
from ephemera.errors import EphemeraError


def _key_commands(group: typer.Typer, role: str) -> None:
    """create, list and revoke for one kind of key: admin keys and worker keys alike."""

    @group.command("create")
    def create(
        name: str,
        data_dir: DataDir = None,
        database_url: DatabaseUrl = None,
        blob_url: BlobUrl = None,
    ) -> None:
        """Create a key; the key alone is printed on standard output, once."""
        with open_store(data_dir, database_url=database_url, blob_url=blob_url) as store:
            try:
                key = store.create_key(name, role)
            except EphemeraError as exc:
                raise fail(exc) from None
            store.audit(ACTOR, f"{role}-key.create", name)
        print(key)

    @group.command("list")
    def list_keys(
        data_dir: DataDir = None,
        database_url: DatabaseUrl = None,
        blob_url: BlobUrl = None,
        as_json: AsJson = False,
    ) -> None:
        """Key names (the keys themselves are stored only as hashes)."""
        with open_store(data_dir, database_url=database_url, blob_url=blob_url) as store:
            try:
                keys = store.list_keys(role)
            except EphemeraError as exc:
                raise fail(exc) from None
        if as_json:
            print(json.dumps(jsonable(keys)))
            return
        table = Table("name", "created")
        for k in keys:
            table.add_row(k.name, render.instant(k.created_at))
        out.print(table)

    @group.command("revoke")
    def revoke(
        name: str,
        data_dir: DataDir = None,
        database_url: DatabaseUrl = None,
        blob_url: BlobUrl = None,
    ) -> None:
        """Revoke a key: it stops working at once."""
        with open_store(data_dir, database_url=database_url, blob_url=blob_url) as store:
            try:
                store.revoke_key(name, role)
            except EphemeraError as exc:
                raise fail(exc) from None
            store.audit(ACTOR, f"{role}-key.revoke", name)
        err.print(f"revoked {name}", markup=False)


_key_commands(keys_app, "admin")
_key_commands(worker_keys_app, "worker")
