"""Long-running commands: the server, worker processes, and schema migration."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from ephemera.cli.app import app
from ephemera.cli.common import (
    ADMIN_KEY_FILE,
    DataDir,
    err,
    fail,
    open_store,
    out,
    settings_for,
    write_secret,
)
from ephemera.errors import EphemeraError


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: DataDir = None,
) -> None:
    """Run the HTTP API on the configured backends (SQLite + a local directory by default)."""
    import uvicorn

    from ephemera.http import create_app
    from ephemera.service import Service
    from ephemera.volume import prepare_data_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_for(data_dir)
    for warning in prepare_data_dir(settings):
        err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    store = open_store(data_dir)
    if not store.has_admin_key():
        key = store.create_admin_key("default")
        key_file = settings.data_dir / ADMIN_KEY_FILE
        key_file.unlink(missing_ok=True)
        write_secret(key_file, key)
        err.print(f"Created admin key 'default' (shown once; also saved to {key_file}):")
        print(key, flush=True)
    try:
        # Recovery, scheduled cleanup and workers: what a host app runs in its lifespan.
        with Service(store):
            uvicorn.run(
                create_app(store),
                host=host,
                port=port,
                loop="uvloop" if os.name != "nt" else "asyncio",
                http="httptools",
                log_level="info",
                timeout_graceful_shutdown=10,
            )
    finally:
        store.close()


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks run at once")] = 1,
    name: Annotated[str | None, typer.Option(help="Worker name [default: host:pid:random]")] = None,
    poll_interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between looks at an empty queue")
    ] = 0.5,
    data_dir: DataDir = None,
) -> None:
    """Run tasks from the queue on this machine until interrupted (as many at once as wanted)."""
    import signal
    import threading

    from ephemera.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    store = open_store(data_dir)
    runner = Worker(store, concurrency=concurrency, name=name, poll_interval_s=poll_interval)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner.start()
    try:
        stop.wait()
    finally:
        runner.stop()
        store.close()


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the database schema up to date."""
    from ephemera.catalog import Catalog

    settings = settings_for(data_dir)
    catalog = Catalog(settings.resolved_database_url())
    try:
        before, head = catalog.revisions()
        catalog.migrate()
    except EphemeraError as exc:
        raise fail(exc) from None
    finally:
        catalog.dispose()
    out.print(f"schema at {head}" + (" (was up to date)" if before == head else f" (was {before})"))
