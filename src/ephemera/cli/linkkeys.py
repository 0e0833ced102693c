"""``ephemera link-key``: rotate, list and revoke the keys that sign download links."""

from __future__ import annotations

import json

from rich.table import Table

from ephemera.cli import render
from ephemera.cli.app import link_keys_app
from ephemera.cli.common import (
    ACTOR,
    AsJson,
    BlobUrl,
    DatabaseUrl,
    DataDir,
    err,
    jsonable,
    out,
    store_for,
)


@link_keys_app.command("rotate")
def rotate(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
) -> None:
    """A new key signs links from now on; older keys verify until revoked. Prints its ID."""
    with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
        key = store.rotate_link_key()
        store.audit(ACTOR, "link-key.rotate", key.id)
    print(key.id)


@link_keys_app.command("list")
def list_keys(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    as_json: AsJson = False,
) -> None:
    """Every key, newest first: the newest not revoked signs, the others not revoked verify."""
    with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
        keys = store.list_link_keys()
    if as_json:
        rows = [{name: v for name, v in jsonable(k).items() if name != "secret"} for k in keys]
        print(json.dumps(rows))
        return
    table = Table("id", "created", "revoked")
    for k in keys:
        table.add_row(k.id, render.instant(k.created_at), render.instant(k.revoked_at))
    out.print(table)


@link_keys_app.command("revoke")
def revoke(
    key_id: str,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
) -> None:
    """Revoke a key: every link it signed is refused (403) at once."""
    with store_for(data_dir, database_url=database_url, blob_url=blob_url) as store:
        store.revoke_link_key(key_id)
        store.audit(ACTOR, "link-key.revoke", key_id)
    err.print(f"revoked {key_id}", markup=False)
