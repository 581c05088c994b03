"""Reading the queue from a command: read-only, whether the service runs or not.

The queue is opened through its one read path (queue/reader.py) on a read-only
connection: a command that only reads never creates the queue (no file: None) and
cannot change it. A queue that cannot be read is a clear message naming its file,
never a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from mailgate.config.schema import Config
from mailgate.errors import StoreError
from mailgate.queue.open import open_backend
from mailgate.queue.postgres import redact
from mailgate.queue.reader import QueueReader, open_reader


@contextlib.contextmanager
def reading(config: Config) -> Iterator[QueueReader | None]:
    """A reader of `config`'s queue, or None if there is none yet."""
    path = redact(config.queue.url) if config.queue.url else str(config.queue_path)
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
