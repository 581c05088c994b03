"""A message's life as the queue records it, for `mailgate track` and `mailgate queue show`:
read-only, portable SQL, used through queue/reader.py's QueueReader.

Functions over one open `Connection` (queue/backend.py). Every lookup is an index
search: messages by id, by Message-ID header, by sender; recipients by message and by
address; attempts by message; bounces by the message they report on (a bounce's
`client` names it: queue/dsn_source.py writes it so).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.model import MessageKind
from mailgate.queue import track
from mailgate.queue.backend import Connection
from mailgate.queue.dsn_source import DSN_CLIENT_PREFIX


@dataclass(frozen=True, slots=True)
class Attempt:
    started_at: float
    finished_at: float
    disposition: str
    reply: str


@dataclass(frozen=True, slots=True)
class RecipientHistory:
    address: str
    connector: str
    state: str
    attempts: int
    last_reply: str | None
    remote_mta: str | None
    due_at: float
    updated_at: float
    history: tuple[Attempt, ...]
    lease_owner: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True, slots=True)
class BounceRef:
    """A bounce queued for a message, and where its delivery stands."""

    queue_id: str
    kind: str
    received_at: float
    recipient: str | None
    state: str | None


@dataclass(frozen=True, slots=True)
class MessageHistory:
    queue_id: str
    received_at: float
    sender: str
    size: int
    client: str
    header_message_id: str | None
    smtputf8: bool
    kind: str
    origin: str | None
    done_at: float | None
    recipients: tuple[RecipientHistory, ...]
    bounces: tuple[BounceRef, ...]

    @property
    def bounce_of(self) -> str | None:
        """The queue id this message is a bounce of, if it is one."""
        if self.kind != MessageKind.NORMAL.value and self.client.startswith(DSN_CLIENT_PREFIX):
            return self.client[len(DSN_CLIENT_PREFIX) :]
        return None


def message_id(conn: Connection, key: str) -> str | None:
    """The queue id `key` names (queue ids are upper-case hex; any case is accepted)."""
    key = key.strip()
    for candidate in dict.fromkeys((key, key.upper())):
        row = conn.execute("SELECT id FROM messages WHERE id = ?", (candidate,)).fetchone()
        if row is not None:
            return str(row[0])
    return None


def find(conn: Connection, key: str, limit: int = 20) -> list[str]:
    """Queue ids `key` designates, newest first: a queue id, a Message-ID, or an address.

    A Message-ID is matched with and without its angle brackets; an address as the
    envelope sender or a recipient, as given and in lower case.
    """
    key = key.strip()
    if not key:
        return []
    queue_id = message_id(conn, key)
    if queue_id is not None:
        return [queue_id]
    bare = key[1:-1] if key.startswith("<") and key.endswith(">") else key
    found: dict[str, float] = {}
    for value in dict.fromkeys((f"<{bare}>", bare)):
        found.update(track.newest(conn, track.MESSAGE_ID, value, limit))
    if not found and "@" in bare:
        for address in dict.fromkeys((bare, bare.lower())):
            found.update(track.newest(conn, track.SENDER, address, limit))
            found.update(track.newest(conn, track.RECIPIENT, address, limit))
    newest = sorted(found, key=lambda q: (found[q], q), reverse=True)
    return newest[:limit]


def message_history(conn: Connection, queue_id: str) -> MessageHistory | None:
    """Everything the queue knows of one message, or None if it is not (or no longer) there."""
    row = conn.execute(
        "SELECT id, received_at, sender, size, client, header_message_id, smtputf8, kind, "
        "origin, done_at FROM messages WHERE id = ?",
        (queue_id,),
    ).fetchone()
    if row is None:
        return None
    attempts: dict[int, list[Attempt]] = {}
    for recipient_id, started, finished, disposition, reply in conn.execute(
        "SELECT recipient_id, started_at, finished_at, disposition, reply FROM attempts "
        "WHERE message_id = ? ORDER BY started_at, id",
        (queue_id,),
    ).fetchall():
        attempts.setdefault(int(recipient_id), []).append(
            Attempt(float(started), float(finished), str(disposition), str(reply))
        )
    recipients = tuple(
        RecipientHistory(
            address=str(r[1]),
            connector=str(r[2]),
            state=str(r[3]),
            attempts=int(r[4]),
            last_reply=r[5],
            remote_mta=r[6],
            due_at=float(r[7]),
            updated_at=float(r[8]),
            history=tuple(attempts.get(int(r[0]), ())),
            lease_owner=r[9],
            lease_until=None if r[10] is None else float(r[10]),
        )
        for r in conn.execute(
            "SELECT id, address, connector, state, attempts, last_reply, remote_mta, due_at, "
            "updated_at, lease_owner, lease_until FROM recipients WHERE message_id = ? "
            "ORDER BY id",
            (queue_id,),
        ).fetchall()
    )
    return MessageHistory(
        queue_id=str(row[0]),
        received_at=float(row[1]),
        sender=str(row[2]),
        size=int(row[3]),
        client=str(row[4]),
        header_message_id=row[5],
        smtputf8=bool(row[6]),
        kind=str(row[7]),
        origin=row[8],
        done_at=None if row[9] is None else float(row[9]),
        recipients=recipients,
        bounces=tuple(bounces_of(conn, queue_id)),
    )


def bounces_of(conn: Connection, queue_id: str) -> list[BounceRef]:
    """Bounces queued for `queue_id`, oldest first, with their recipient's state."""
    refs = []
    for bounce_id, kind, received in conn.execute(
        "SELECT id, kind, received_at FROM messages WHERE kind <> 'normal' AND client = ? "
        "ORDER BY received_at",
        (DSN_CLIENT_PREFIX + queue_id,),
    ).fetchall():
        target = recipient_state(conn, str(bounce_id))
        refs.append(
            BounceRef(
                queue_id=str(bounce_id),
                kind=str(kind),
                received_at=float(received),
                recipient=None if target is None else str(target[0]),
                state=None if target is None else str(target[1]),
            )
        )
    return refs


def recipient_state(conn: Connection, queue_id: str) -> tuple[str, str] | None:
    """(address, state) of a message's first recipient: where a bounce's delivery stands."""
    row = conn.execute(
        "SELECT address, state FROM recipients WHERE message_id = ? ORDER BY id LIMIT 1",
        (queue_id,),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))
