"""`mailgate db`: the queue store's schema (status, upgrade) and moving a node's SQLite
queue into PostgreSQL (migrate-from-sqlite).

`status` exits 0 only when the store is at this mailgate's schema. `upgrade` applies the
pending migrations in one transaction (queue/migrations.py); a PostgreSQL store is
upgraded only here, never by a start. `migrate-from-sqlite DIR` takes DIR's locks (it is
refused while a service runs there), copies everything into the configured PostgreSQL
store in one transaction, and marks the file moved (queue/move.py). A URL's password is
never printed: every message names the store redacted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailgate.cli.common import config_options, get_config
from mailgate.config.schema import Config
from mailgate.errors import AlreadyRunning, StoreError, StoreInUse
from mailgate.observe import catalog
from mailgate.queue.lock import DataDirLock
from mailgate.queue.open import StoreBackend, open_backend
from mailgate.queue.sqlite import SqliteBackend
from mailgate.service import wiring


@click.group("db")
def db_group() -> None:
    """The queue store: its schema version (status, upgrade), and moving a single node's
    SQLite queue into the PostgreSQL store (migrate-from-sqlite)."""


def _backend(config: Config) -> StoreBackend:
    try:
        return open_backend(config.queue, config.data_dir)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@db_group.command()
@config_options
def status(config_path: Path | None, data_dir: Path | None) -> None:
    """Say which store the configuration names and whether its schema is this mailgate's
    (exit 0) or needs `mailgate db upgrade` (exit 1)."""
    backend = _backend(get_config(config_path, data_dir))
    try:
        found = backend.schema_status()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    click.echo(f"queue: {backend.name}, {backend.where}")
    click.echo(f"schema: {found.describe()}")
    for step in found.pending:
        click.echo(f"  to apply: {step.version}: {step.summary}")
    if not found.current:
        sys.exit(1)


@db_group.command()
@config_options
def upgrade(config_path: Path | None, data_dir: Path | None) -> None:
    """Create the queue's schema, or bring it to this mailgate's, in one transaction. On a
    PostgreSQL store shared by several nodes, run it once, then start the new mailgate on
    each node."""
    config = get_config(config_path, data_dir)
    backend = _backend(config)
    try:
        before, steps = backend.upgrade()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        backend.close()
    if not steps:
        click.echo(f"{backend.where}: schema {before.found}, up to date: nothing to do")
        return
    new = steps[-1].version
    old = "none" if before.found is None else str(before.found)
    for step in steps:
        click.echo(f"applied {step.version}: {step.summary}")
    click.echo(f"{backend.where}: schema {old} -> {new}")
    _emit(config, catalog.QUEUE_SCHEMA_UPGRADED, store=backend.where, old=old, new=new)


@db_group.command("migrate-from-sqlite")
@config_options
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--file",
    "queue_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The SQLite queue file, if not DIRECTORY/queue/queue.db.",
)
def migrate_from_sqlite(
    config_path: Path | None, data_dir: Path | None, directory: Path, queue_file: Path | None
) -> None:
    """Move the queue of the single node whose data directory is DIRECTORY (its service
    stopped) into the PostgreSQL store of the configuration: messages, bodies, recipient
    states, attempts and history, in one transaction. The file is then marked moved; a
    second run, or one that meets a message id already there, moves nothing."""
    # psycopg only for this PostgreSQL command: `db status` on SQLite does without it.
    from mailgate.queue.move import MoveRefused, move
    from mailgate.queue.postgres import PostgresBackend

    config = get_config(config_path, data_dir)
    target = _backend(config)
    if not isinstance(target, PostgresBackend):
        raise click.ClickException(
            "the configuration names no PostgreSQL queue: set [queue] url first"
        )
    path = queue_file or directory / "queue" / "queue.db"
    if not path.is_file():
        raise click.ClickException(f"no queue file at {path}")
    lock = DataDirLock(directory, path)  # no service may run on it meanwhile, nor start
    try:
        lock.acquire()
    except (AlreadyRunning, StoreInUse) as exc:
        raise click.ClickException(f"{exc}: stop it first") from None
    try:
        moved = move(SqliteBackend(path, lock_timeout=5.0), target)
    except (MoveRefused, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        lock.release()
        target.close()
    click.echo(
        f"moved {path} into {target.where}: {moved.messages} messages "
        f"({moved.open_messages} open), {moved.bodies} bodies, {moved.recipients} recipients, "
        f"{moved.attempts} attempts; {moved.leases_given_back} lease(s) given back"
    )
    if moved.left_behind:
        click.echo(
            f"left behind: {moved.left_behind} row(s) whose message is gone "
            f"(`mailgate queue check --data-dir {directory}` lists them)"
        )
    click.echo(f"{path} is marked moved: no service starts on it again")
    _emit(
        config,
        catalog.QUEUE_MOVED,
        source=str(path),
        target=target.where,
        messages=moved.messages,
        open=moved.open_messages,
        recipients=moved.recipients,
        attempts=moved.attempts,
        leases=moved.leases_given_back,
    )


def _emit(config: Config, event: catalog.EventType, **fields: object) -> None:
    events = wiring.open_events(config, stderr=False)
    try:
        events.emit(event, **fields)
    finally:
        events.close()
