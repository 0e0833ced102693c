"""Long-running commands: the server, worker processes, and schema migration."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated

import typer

from ephemera.cli.app import app
from ephemera.cli.common import (
    ADMIN_KEY_FILE,
    EXIT_USAGE,
    BlobUrl,
    DatabaseUrl,
    DataDir,
    announce,
    err,
    fail,
    open_store,
    out,
    settings_for,
    write_secret,
)
from ephemera.cli.processors import check_processors
from ephemera.errors import EphemeraError, StorageError

if TYPE_CHECKING:
    from ephemera.config import Settings
    from ephemera.store import Store

CANNOT_START = "cannot start: "
DATABASE_HINT = "check --database-url or EPHEMERA_DATABASE_URL"


def start_store(settings: Settings) -> Store:
    """Open (creating) the store and check every backend, or exit with one line saying what
    failed and how to fix it: a server that reports ready and then logs tracebacks every
    tick helps nobody."""
    from ephemera.deployment import check_record, check_urls, check_writable, write_record
    from ephemera.store import Store
    from ephemera.volume import prepare_data_dir

    backends = announce(settings)
    try:
        # Starting on other backends than recorded would serve an empty store: only
        # `migrate --move` moves a deployment.
        check_urls(backends)
        check_record(settings.data_dir, backends)
        check_writable(settings.data_dir, settings.dir_mode_bits)
    except EphemeraError as exc:
        raise fail(exc, EXIT_USAGE, context=CANNOT_START) from None
    try:
        store = Store.open(settings)
    except StorageError as exc:
        raise fail(exc, context=CANNOT_START, hint=DATABASE_HINT) from None
    except EphemeraError as exc:
        raise fail(exc, EXIT_USAGE, context=CANNOT_START) from None
    try:
        store.prepare_blobs()
        write_record(settings.data_dir, backends)
    except EphemeraError as exc:
        store.close()
        raise fail(exc, EXIT_USAGE, context=CANNOT_START) from None
    # Only a server that will run takes the reserve: a failed start leaves no 16 MiB behind.
    for warning in prepare_data_dir(settings):
        err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    return store


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on [default: $EPHEMERA_HOST or 127.0.0.1]"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="TCP port [default: $EPHEMERA_PORT or 8000]"),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
) -> None:
    """Run the HTTP API on the configured backends (SQLite + a local directory by default)."""
    import uvicorn

    from ephemera.console import install_console
    from ephemera.http import create_app
    from ephemera.service import Service

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_for(data_dir, database_url=database_url, blob_url=blob_url)
    check_processors(settings)
    store = start_store(settings)
    if not store.has_admin_key():
        key = store.create_key("default")
        key_file = settings.data_dir / ADMIN_KEY_FILE
        key_file.unlink(missing_ok=True)
        write_secret(key_file, key)
        err.print(f"Created admin key 'default' (shown once; also saved to {key_file}):")
        print(key, flush=True)
    try:
        # Recovery, scheduled cleanup and workers: what a host app runs in its lifespan.
        app = create_app(store)
        install_console(app, store)
        with Service(store, auto_processes=True):
            uvicorn.run(
                app,
                host=host if host is not None else settings.host,
                port=port if port is not None else settings.port,
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
        float | None,
        typer.Option(
            min=0.01,
            help="Seconds between looks at an empty queue; a submission wakes it sooner "
            "[default: worker_poll_s]",
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    supervised: Annotated[
        bool,
        typer.Option(
            hidden=True,
            help="Started by `ephemera serve`: its settings come on standard input, whose end "
            "(the server is gone) stops the worker at once",
        ),
    ] = False,
) -> None:
    """Run tasks from the queue on this machine until interrupted (as many at once as wanted)."""
    import signal
    import sys
    import threading

    from ephemera.config import Settings
    from ephemera.store import Store
    from ephemera.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    orphaned = threading.Event()
    if supervised:
        settings = Settings.model_validate_json(sys.stdin.buffer.readline())

        def watch_server() -> None:
            sys.stdin.buffer.read()  # returns at end of file: the server is gone
            orphaned.set()
            stop.set()

        threading.Thread(target=watch_server, name="ephemera-server-watch", daemon=True).start()
        try:
            store = Store.open(settings, create=False)
        except EphemeraError as exc:
            raise fail(exc, EXIT_USAGE, context=CANNOT_START) from None
    else:
        check_processors(settings_for(data_dir, database_url=database_url, blob_url=blob_url))
        store = open_store(data_dir, database_url=database_url, blob_url=blob_url)
    try:
        store.check_blobs()
    except EphemeraError as exc:
        store.close()
        raise fail(exc, EXIT_USAGE, context=CANNOT_START) from None
    runner = Worker(store, concurrency=concurrency, name=name, poll_interval_s=poll_interval)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if stop.is_set():  # the server went while this worker started: it takes no task
        store.close()
        return
    runner.start()
    try:
        stop.wait()
    finally:
        # Without its server, a task goes back to the queue now rather than finish unseen.
        runner.stop(timeout_s=0 if orphaned.is_set() else 30)
        store.close()


@app.command()
def migrate(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    blob_url: BlobUrl = None,
    move: Annotated[
        bool,
        typer.Option(
            "--move",
            help="Accept backends other than the data dir's deployment recorded: move it there",
        ),
    ] = False,
) -> None:
    """Create the store or bring its schema up to date, and record its backends in the data
    dir. Other backends than recorded are refused (exit 2) unless --move."""
    from ephemera.deployment import check_record, check_urls, check_writable, write_record
    from ephemera.store import migrate_schema

    settings = settings_for(data_dir, database_url=database_url, blob_url=blob_url)
    backends = announce(settings)
    try:
        check_urls(backends)
        if not move:
            # Without its URL, a PostgreSQL deployment would silently become an empty
            # SQLite store in the data dir.
            check_record(settings.data_dir, backends)
        check_writable(settings.data_dir, settings.dir_mode_bits)
        before, head = migrate_schema(
            backends.metadata, file_mode=settings.file_mode_bits, dir_mode=settings.dir_mode_bits
        )
        write_record(settings.data_dir, backends)
    except EphemeraError as exc:
        raise fail(exc, EXIT_USAGE) from None
    out.print(f"schema at {head}" + (" (was up to date)" if before == head else f" (was {before})"))
