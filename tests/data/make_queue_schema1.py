"""Writes queue_schema1.sql: a queue file made by mailgate before numbered migrations
(schema "1"), dumped as SQL. Run it with that mailgate on the path, e.g. from a checkout
of b4d60fb: `PYTHONPATH=CHECKOUT/src python tests/data/make_queue_schema1.py`. Kept as
the recipe of the dump the upgrade test (tests/integration/test_queue_migrations.py)
loads; it is not a test and needs the old code to run."""

import sqlite3
import sys
import tempfile
from pathlib import Path

from mailgate.model import Disposition, NewMessage, NewRecipient, Outcome
from mailgate.queue.commit import DirectWriter
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueStore

OWNER = "old-node:4242:postoffice-1:1:"
T0 = 1_700_000_000.0  # fixed times and ids: the dump is the same at every run


def message(n: int, *rcpts: tuple[str, str]) -> NewMessage:
    return NewMessage(
        queue_id=f"{int((T0 + n) * 1_000_000):013X}{n:06X}",
        sender=f"sender{n}@example.org",
        recipients=tuple(NewRecipient(a, c) for a, c in rcpts),
        body=f"Subject: old {n}\r\nMessage-ID: <old{n}@example.org>\r\n\r\nbody {n}\r\n".encode(),
        received_at=T0 + n,
        client="old [127.0.0.1]",
        header_message_id=f"<old{n}@example.org>",
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "queue.db"
        backend = SqliteBackend(path)
        backend.initialize()
        writer = DirectWriter(backend)
        store = QueueStore(
            backend, writer, policy=RetryPolicy(60, 600, 10 * 365 * 86400), clock=lambda: T0 + 50
        )
        po, smart = "postoffice", "smarthost"
        for n, rcpts in enumerate(
            [
                [("a1@po1.net1.mx.test", po), ("far1@elsewhere.org", smart)],
                [("a2@po1.net1.mx.test", po)],
                [("far3@elsewhere.org", smart)],
                [("a4@po1.net1.mx.test", po), ("a5@po1.net1.mx.test", po)],
            ],
            start=1,
        ):
            store.enqueue(message(n, *rcpts)).result()
        claims = store.claim(po, OWNER, 3).result()  # a1, a2, a4: a4's message stays leased
        now = T0 + 60
        outcomes = [
            Outcome(claims[0], Disposition.DELIVERED, "250 2.0.0 delivered", now, now),
            Outcome(claims[1], Disposition.DEFERRED, "451 4.2.2 mailbox full", now, now),
        ]
        store.record(outcomes, OWNER).result()
        [far] = [c for c in store.claim(smart, OWNER, 1).result()]
        store.record([Outcome(far, Disposition.DELIVERED, "250 ok", now, now)], OWNER).result()
        writer.close()
        db = sqlite3.connect(path)
        db.execute("UPDATE recipients SET state = 'held' WHERE address = 'far3@elsewhere.org'")
        db.commit()
        sys.stdout.write("\n".join(db.iterdump()) + "\n")
        db.close()


if __name__ == "__main__":
    main()
