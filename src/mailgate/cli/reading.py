"""Reading the queue from a command: read-only, whether the service runs or not.

The queue is opened through its one read path (queue/reader.py) on a read-only
connection: a command that only reads never creates the queue (no file: None) and
cannot change it. A queue that cannot be read is a clear message naming its file,
never a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from mailgate.config.schema import Config
from mailgate.errors import StoreError
from mailgate.model import WAITING_STATES
from mailgate.observe.eventstore import iso_time
from mailgate.queue.history import Attempt, MessageHistory, RecipientHistory
from mailgate.queue.open import open_backend
from mailgate.queue.reader import QueueReader, open_reader


@contextlib.contextmanager
def reading(config: Config) -> Iterator[QueueReader | None]:
    """A reader of `config`'s queue, or None if there is none yet."""
    path = str(config.queue_path)
    if config.queue.url:  # psycopg only for a PostgreSQL queue: 90 ms of every command
        from mailgate.queue.postgres import redact

        path = redact(config.queue.url)
    try:
        reader = open_reader(open_backend(config.queue, config.data_dir, lock_timeout=30.0))
    except StoreError as exc:
        raise click.ClickException(f"cannot read the queue {path}: {exc}") from None
    try:
        yield reader
    except StoreError as exc:
        raise click.ClickException(f"cannot read the queue {path}: {exc}") from None
    finally:
        if reader is not None:
            reader.close()


# The records `queue show --json` and `track --json` share, one definition for both.
def message_fields(message: MessageHistory) -> dict[str, Any]:
    """What both tell of a message, from its client to when it was done."""
    return {
        "client": message.client,
        "sender": message.sender,
        "size": message.size,
        "message_id": message.header_message_id,
        "kind": message.kind,
        "bounce_of": message.bounce_of,
        "origin": message.origin,
        "smtputf8": message.smtputf8,
        "done_at": message.done_at,
    }


def recipient_fields(r: RecipientHistory) -> dict[str, Any]:
    """What both tell of a recipient, without its history."""
    return {
        "address": r.address,
        "connector": r.connector,
        "state": r.state,
        "attempts": r.attempts,
        "last_reply": r.last_reply,
        "remote_mta": r.remote_mta,
        "due_at": r.due_at if r.state in WAITING_STATES else None,
        "updated_at": r.updated_at,
    }


def attempt_fields(a: Attempt) -> dict[str, Any]:
    """What both tell of one delivery attempt."""
    return {
        "time": iso_time(a.started_at),
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "disposition": a.disposition,
        "reply": a.reply,
    }
