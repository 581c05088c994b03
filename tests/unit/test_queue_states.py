"""Queue states and their groupings, declared once in the model, and the SQL built from them.

The partial indexes of schema_sqlite.sql spell their predicates out (SQL cannot import the
model), and SQLite uses such an index only when a query holds its predicate term for term:
so the index text must stay what queue/states.py builds, and a query built from it must
walk the index. Checked on a real (in-memory) SQLite database with the real schema.
"""

from __future__ import annotations

import re
import sqlite3

from mailgate.model import FINAL_STATES, OPEN_STATES, WAITING_STATES, RecipientState
from mailgate.queue import states
from mailgate.queue.backend import SQLITE
from mailgate.queue.schema import INDEXES, tables


def schema() -> str:
    """The SQLite schema, as the first migration creates it."""
    return "".join(f"{s};\n" for s in [*tables(SQLITE), *INDEXES])


def index_predicate(name: str) -> str:
    found = re.search(
        rf"CREATE INDEX IF NOT EXISTS {name} ON \w+ \([^)]*\)\s+WHERE (.+?);", schema(), re.S
    )
    assert found, f"no partial index {name} in queue/schema.py"
    return " ".join(found.group(1).split())


def test_the_groupings_cover_every_state_once() -> None:
    assert set(OPEN_STATES) | set(FINAL_STATES) == set(RecipientState)
    assert not set(OPEN_STATES) & set(FINAL_STATES)
    assert set(WAITING_STATES) <= set(OPEN_STATES)
    assert [s.final for s in RecipientState] == [s in FINAL_STATES for s in RecipientState]
    assert [s.value for s in OPEN_STATES] == ["queued", "active", "deferred", "held", "quarantined"]


def test_the_sql_fragments_are_built_from_the_groupings() -> None:
    assert states.WAITING == "IN ('queued', 'deferred')"
    assert states.OPEN == "NOT IN ('delivered', 'bounced')"
    assert states.sql_in([RecipientState.HELD]) == "IN ('held')"


def test_the_partial_indexes_match_the_models_groupings() -> None:
    assert index_predicate("recipients_due") == f"state {states.WAITING}"
    assert index_predicate("recipients_lease") == f"state = '{RecipientState.ACTIVE.value}'"


def test_queries_built_from_the_groupings_walk_the_due_index() -> None:
    db = sqlite3.connect(":memory:")
    db.executescript(schema())
    plan = " ".join(
        str(row[3])
        for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM recipients "
            f"WHERE connector = ? AND state {states.WAITING} AND due_at <= ? ORDER BY due_at",
            ("postoffice", 0.0),
        )
    )
    db.close()
    assert "USING INDEX recipients_due" in plan and "TEMP B-TREE" not in plan, plan
