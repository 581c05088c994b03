"""What a report needs from the queue, and the queueing of the report built from it.

`ReportQueue` is the store's `on_done` hook (and its `delay_warner`): inside the
transaction that finishes a message (or finds it long delayed) it reads a
`BounceSource` (envelope, body, the recipients to report, with their last reply and
remote MTA), hands it to the report builder (dsn.generate.BounceGenerator, given at
wiring time) and inserts the report the builder returns as a new message, in the same
transaction: a bounce is never lost between "failed" and "reported". A report's
`client` names the message it reports on (DSN_CLIENT_PREFIX + its queue id), which is
how history.bounces_of finds it. Whatever the builder raises propagates: ops.py keeps
the message for the administrator then (ReportFailed).
"""

from __future__ import annotations

from typing import Protocol

from mailgate.dsn.generate import BounceResult, BounceSource, Report, ReportedRecipient
from mailgate.model import MessageKind, NewMessage, NewRecipient, RecipientState
from mailgate.queue.backend import Connection
from mailgate.queue.ops import insert_message

DSN_CLIENT_PREFIX = "mailgate dsn for "
"""A report's `client` column: this prefix and the queue id of the message it reports on."""


class ReportBuilder(Protocol):
    def bounce(self, source: BounceSource, now: float) -> Report | None: ...

    def delay_warning(self, source: BounceSource, now: float) -> Report | None: ...


def bounce_source(conn: Connection, queue_id: str, state: RecipientState) -> BounceSource | None:
    """The message `queue_id` with its recipients in `state`; None if it is gone."""
    return _source(conn, queue_id, state, only_if_any=False)


def _source(
    conn: Connection, queue_id: str, state: RecipientState, *, only_if_any: bool
) -> BounceSource | None:
    # The state is spelled in the SQL, not bound: SQLite prepares a statement again at each
    # new binding of a parameter compared with a column that a partial index's WHERE names
    # (recipients_due, recipients_lease), and this runs for every finished message (issue
    # 14: 21 -> 6 us per call). A RecipientState value is one of a fixed set of words.
    recipients = tuple(
        ReportedRecipient(str(address), reply, remote)
        for address, reply, remote in conn.execute(
            "SELECT address, last_reply, remote_mta FROM recipients "
            f"WHERE message_id = ? AND state = '{RecipientState(state).value}' ORDER BY id",
            (queue_id,),
        ).fetchall()
    )
    if only_if_any and not recipients:
        return None  # nothing to report: the message and its body need not be read
    row = conn.execute(
        "SELECT m.sender, m.received_at, m.kind, b.data FROM messages m "
        "LEFT JOIN bodies b ON b.message_id = m.id WHERE m.id = ?",
        (queue_id,),
    ).fetchone()
    if row is None:
        return None
    original = None if row[3] is None else bytes(row[3])
    return BounceSource(
        queue_id, str(row[0]), float(row[1]), MessageKind(row[2]), original, recipients
    )


class ReportQueue:
    """The reports a finished or delayed message owes, queued in its own transaction."""

    def __init__(self, builder: ReportBuilder) -> None:
        self.builder = builder

    def __call__(self, conn: Connection, queue_id: str, now: float) -> BounceResult | None:
        """The bounce of a finished message's failed recipients (an `on_done` hook). Run for
        every finished message, most of them delivered: the body is read only for a bounce."""
        source = _source(conn, queue_id, RecipientState.BOUNCED, only_if_any=True)
        if source is None or not source.recipients:
            return None
        return _queue(conn, self.builder.bounce(source, now), now)

    def warn_delayed(self, conn: Connection, queue_id: str, now: float) -> BounceResult | None:
        """A delay warning for a message's deferred recipients, at most once per message."""
        conn.execute("UPDATE messages SET delay_warned = 1 WHERE id = ?", (queue_id,))
        source = bounce_source(conn, queue_id, RecipientState.DEFERRED)
        if source is None:
            return None
        return _queue(conn, self.builder.delay_warning(source, now), now)


def _queue(conn: Connection, report: Report | None, now: float) -> BounceResult | None:
    if report is None:
        return None
    result = report.result
    if report.body is not None:
        if not (result.bounce_id and result.recipient is not None and result.connector):
            raise ValueError(f"the report on {result.queue_id} has no id, recipient or connector")
        insert_message(
            conn,
            NewMessage(
                queue_id=result.bounce_id,
                sender="",
                recipients=(NewRecipient(result.recipient, result.connector),),
                body=report.body,
                received_at=now,
                client=DSN_CLIENT_PREFIX + result.queue_id,
                kind=result.kind or MessageKind.BOUNCE,
            ),
        )
    return result
