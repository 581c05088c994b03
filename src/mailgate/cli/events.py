"""`mailgate events`: query the event store (<log dir>/events.db), or follow it live.

Read-only: works whether the service runs or not, and never creates the store
(no store yet: nothing is printed, or `[]` with --json).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click

from mailgate.cli.common import config_options, get_config
from mailgate.config.units import parse_duration
from mailgate.observe.catalog import Category
from mailgate.observe.eventstore import EventReader, store_path

POLL = 0.2
FOLLOW_BATCH = 1000


class WhenType(click.ParamType[float]):
    """A moment: a duration before now ("1h", "30m", "2d") or a local ISO time."""

    name = "WHEN"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_when(str(value), time.time())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def parse_when(text: str, now: float) -> float:
    """Epoch seconds of "1h" (an hour ago) or "2026-11-25T10:00" (local time unless zoned)."""
    with contextlib.suppress(ValueError):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration ('1h', '30m') nor a time ('2026-11-25T10:00')"
        ) from None
    return moment.timestamp()  # naive: local time, as printed


def printable(value: object) -> str:
    """Text with control characters escaped, so stored values cannot forge output lines."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def local_time(ts: float, *, millis: bool = False) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return f"{stamp}.{int(ts % 1 * 1000):03d}" if millis else stamp


def human_line(event: dict[str, Any]) -> str:
    """An event as the service writes it to stderr (its message is stored escaped)."""
    return (
        f"{local_time(event['ts'])} {event['severity']} {event['id']} "
        f"{event['category']}: {event['message']}"
    )


def open_reader(path: Path) -> EventReader | None:
    try:
        return EventReader.open(path)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the event store {path}: {exc}") from None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Stop(Exception):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Stop


@contextlib.contextmanager
def _quiet_pipe() -> Iterator[None]:
    """`mailgate events --follow | head`: a closed pipe ends the command quietly."""
    try:
        yield
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


@click.command()
@click.option("--since", type=WhenType(), help="From this moment: '1h' ago, or '2026-11-25T10:00'.")
@click.option("--until", type=WhenType(), help="Up to this moment (same forms as --since).")
@click.option("--id", "ids", type=int, multiple=True, metavar="ID", help="Event id (repeatable).")
@click.option(
    "--category",
    "categories",
    type=click.Choice([c.value for c in Category], case_sensitive=False),
    multiple=True,
    help="Event category (repeatable).",
)
@click.option("--queue-id", help="Only events about this queue id.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Show the most recent N matching events (0: all).",
)
@click.option("--follow", "-f", is_flag=True, help="Then show new events as they are stored.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON array; with --follow, JSON lines (one object per line).",
)
@config_options
def events(
    since: float | None,
    until: float | None,
    ids: Sequence[int],
    categories: Sequence[str],
    queue_id: str | None,
    limit: int,
    follow: bool,
    as_json: bool,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Show stored events, oldest first; filters combine with AND, repeated ones with OR.

    With --follow, keep polling the store and print new matching events until
    interrupted (Ctrl-C or SIGTERM; exit status 0). Each event is one line in the
    stderr form, or with --json one JSON object: time, ts, id, name, category,
    severity, queue_id, message, fields, rowid.
    """
    config = get_config(config_path, data_dir)
    path = store_path(config.log_dir)
    filters: dict[str, Any] = {
        "since": since,
        "until": until,
        "ids": list(ids),
        "categories": list(categories),
        "queue_id": queue_id,
    }
    reader = open_reader(path)
    snapshot = reader.last_rowid() if reader is not None else 0
    rows = [] if reader is None else reader.query(**filters, limit=limit, upto_rowid=snapshot)
    with _quiet_pipe():
        if not follow:
            if reader is not None:
                reader.close()
            if as_json:
                click.echo(json.dumps(rows, ensure_ascii=False, default=str))
            else:
                for row in rows:
                    click.echo(human_line(row))
            return
        _print(rows, as_json)
        signal.signal(signal.SIGTERM, _on_term)
        with contextlib.suppress(KeyboardInterrupt, _Stop):
            _follow(path, reader, snapshot, filters, as_json)


def _print(rows: Sequence[dict[str, Any]], as_json: bool) -> None:
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False, default=str))
        else:
            click.echo(human_line(row))


def _follow(
    path: Path,
    reader: EventReader | None,
    last: int,
    filters: dict[str, Any],
    as_json: bool,
) -> None:
    """Poll for rows after `last`; reopen when the store appears or is replaced."""
    identity = _identity(path) if reader is not None else None
    try:
        while True:
            current = _identity(path)
            if current != identity:  # created, or replaced by a new file
                if reader is not None:
                    reader.close()
                reader = open_reader(path) if current is not None else None
                identity = current if reader is not None else None
                last = 0
            if reader is not None:
                # Up to a snapshot of the newest rowid, so that rows which do not match
                # are passed over once, not scanned again at every poll.
                newest = reader.last_rowid()
                rows = reader.query(
                    **filters, limit=FOLLOW_BATCH, after_rowid=last, upto_rowid=newest
                )
                _print(rows, as_json)
                if len(rows) == FOLLOW_BATCH:
                    last = rows[-1]["rowid"]
                    continue
                last = max(last, newest)
            time.sleep(POLL)
    finally:
        if reader is not None:
            reader.close()
