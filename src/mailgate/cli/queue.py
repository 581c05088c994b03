"""`mailgate queue`: queue management, like Postfix's postqueue, postsuper and qshape.

Works on any message in any state (quarantined and held included), whether the service
runs or not. Reading commands (list, summary, show, export, check) are in
cli/queue_read.py and never change the queue; the administrator's changes (retry, hold,
release, delete, bounce) are in cli/queue_act.py, each one transaction of its own.
"""

from __future__ import annotations

import click

from mailgate.cli import queue_act, queue_read


@click.group("queue")
def queue_group() -> None:
    """Inspect and manage the queue (list, summary, show, retry, hold, release, delete,
    bounce, export, check), whether the service runs or not."""


for command in (
    queue_read.list_,
    queue_read.summary,
    queue_read.show,
    queue_act.retry,
    queue_act.hold,
    queue_act.release,
    queue_act.delete,
    queue_act.bounce_,
    queue_read.export,
    queue_read.check,
):
    queue_group.add_command(command)
