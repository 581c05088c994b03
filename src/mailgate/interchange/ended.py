"""Events for attempts that ended without an outcome (see queue/leases.py).

One place for everyone who ends leases: the scheduler (leases that ran out), a
thread starting again after its earlier life died, the stall hook, the master for
a dead worker, a start after the service died; and the scheduler's expiry of
recipients never claimed. 4000 says how many leases and why; each recipient set
aside gets 2446 (quarantined) or 2401 (bounced: expired), and each message that
finished 4003 (the report it owed the queue's commit reported: queue/effects.py).
Never raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailgate.model import RecipientState
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue.leases import Ended, LeasesEnded
from mailgate.queue.ops import ReportFailed


def report_ended(events: EventLog, result: LeasesEnded, why: str) -> None:
    if result.count:
        events.emit(catalog.LEASES_RELEASED, count=result.count, why=why)
    report_set_aside(events, result.ended, result.done)


def report_set_aside(
    events: EventLog, ended: Sequence[Ended], done: Sequence[tuple[str, Any]]
) -> None:
    """Events for recipients quarantined or bounced outside an attempt, and the reports
    queued for the messages that finished."""
    for item in ended:
        if item.state is RecipientState.QUARANTINED:
            events.emit(
                catalog.QUARANTINED,
                queue_id=item.queue_id,
                recipient=item.address,
                failures=item.failures,
            )
        else:
            events.emit(
                catalog.BOUNCED,
                queue_id=item.queue_id,
                recipient=item.address,
                connector=item.connector,
                reply=item.reply,
            )
    for queue_id, extra in done:
        if not isinstance(extra, ReportFailed):  # else it is kept: its report is owed
            events.emit(catalog.MESSAGE_DONE, queue_id=queue_id)
