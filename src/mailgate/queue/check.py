"""`mailgate queue check`: rows of the queue that do not fit together, and SQLite's own
check of the file; read-only, used through queue/reader.py's QueueReader.

`check_store` looks at every row, as an integrity check must; its memory stays bounded
(a count and at most `limit` examples per problem). `integrity_check` is SQLite's
`PRAGMA quick_check` (O(size of the file)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailgate.queue import states
from mailgate.queue.backend import Connection


@dataclass(frozen=True, slots=True)
class Problem:
    """One kind of damage `check_store` found: how much, and the first few examples."""

    kind: str
    description: str
    count: int
    examples: tuple[str, ...]


def integrity_check(conn: Connection, limit: int = 100) -> list[str]:
    """Damaged pages: SQLite's `PRAGMA quick_check`, an empty list when the file is sound.
    PostgreSQL checks its own pages (checksums, its logs): nothing to ask it here."""
    if conn.dialect.name != "sqlite":
        return []
    rows = conn.execute(f"PRAGMA quick_check({int(limit)})").fetchall()
    found = [str(row[0]) for row in rows]
    return [] if found == ["ok"] else found


def check_store(
    conn: Connection, now: float, *, lease_grace: float = 60.0, limit: int = 20
) -> list[Problem]:
    """Rows that do not fit together: recipients, attempts and bodies whose message is
    gone, messages with open recipients but no body, and leases held past their expiry
    by more than `lease_grace` (a running service releases them within a second), or
    with no expiry at all. Empty when the store is consistent."""
    checks: list[tuple[str, str, str, str]] = [
        (
            "orphan-recipients",
            "recipients whose message is gone",
            "FROM recipients r WHERE NOT EXISTS (SELECT 1 FROM messages m "
            "WHERE m.id = r.message_id)",
            "r.message_id || ' <' || r.address || '>'",
        ),
        (
            "orphan-attempts",
            "attempts whose recipient is gone",
            "FROM attempts a WHERE NOT EXISTS (SELECT 1 FROM recipients r "
            "WHERE r.id = a.recipient_id)",
            "a.message_id || ' attempt ' || a.id",
        ),
        (
            "missing-body",
            "messages with open recipients but no body",
            "FROM messages m WHERE NOT EXISTS (SELECT 1 FROM bodies b WHERE b.message_id = m.id) "
            "AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id "
            f"AND r.state {states.OPEN})",
            "m.id",
        ),
        (
            "orphan-bodies",
            "bodies whose message is gone",
            "FROM bodies b WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = b.message_id)",
            "b.message_id",
        ),
        (
            "expired-leases",
            "recipients leased past their lease's expiry",
            "FROM recipients r WHERE r.state = 'active' "
            "AND (r.lease_until IS NULL OR r.lease_until < ?)",
            "r.message_id || ' <' || r.address || '> leased to ' || COALESCE(r.lease_owner, '?')",
        ),
    ]
    problems = []
    for kind, description, source, label in checks:
        params: list[Any] = [now - lease_grace] if "?" in source else []
        count = int(conn.execute(f"SELECT COUNT(*) {source}", params).fetchone()[0])
        if not count:
            continue
        examples = tuple(
            str(row[0])
            for row in conn.execute(f"SELECT {label} {source} LIMIT ?", [*params, limit]).fetchall()
        )
        problems.append(Problem(kind, description, count, examples))
    return problems
