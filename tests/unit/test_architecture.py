"""The house rules of issue 12 that the tree itself must keep, checked on the source.

Read with `ast`, nothing imported: SQL touches the queue's tables only inside
src/mailgate/queue/, and only the queue and the event store use sqlite3; receive never
imports interchange (work reaches delivery through the queue and its wake-ups); no
module grows past 450 lines but the declarative tables. One test function per rule.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "mailgate"
QUEUE_TABLES = {"messages", "bodies", "recipients", "attempts", "meta"}
EVENT_STORE_TABLES = {"events"}  # observe/eventstore.py keeps its own database
# SQL names a table after these keywords (or before the column list of an index); upper
# case, as all of mailgate's SQL is written.
TABLE_AFTER_KEYWORD = re.compile(
    r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?:\s+IF\s+NOT\s+EXISTS)?)\s+([A-Za-z_]\w*)"
    r"|\bON\s+([A-Za-z_]\w*)\s*\("
)
MAX_LINES = 450
DECLARATIVE = {"observe/catalog.py", "config/schema.py", "observe/metrics.py"}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), path


def string_literals(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string constant, f-string pieces included (an f-string's text parts are
    Constant nodes inside its JoinedStr)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def tables_named(text: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in TABLE_AFTER_KEYWORD.finditer(text)}


def test_the_scan_finds_sql_on_queue_tables() -> None:
    """The detector itself: it sees the SQL the rule is about, and not English."""
    assert tables_named("SELECT id FROM messages WHERE id = ?") == {"messages"}
    assert tables_named("DELETE FROM bodies WHERE message_id = ?") == {"bodies"}
    assert tables_named("UPDATE recipients SET state = 'held'") == {"recipients"}
    assert tables_named("m.id JOIN recipients r ON r.message_id = m.id") == {"recipients"}
    assert tables_named("CREATE INDEX IF NOT EXISTS x ON messages (done_at)") == {"messages"}
    assert tables_named("INSERT INTO attempts (recipient_id) VALUES (?)") == {"attempts"}
    assert not tables_named("Mail from messages in the queue, updated on delivery")
    tree = ast.parse('conn.execute(f"SELECT {cols} FROM recipients r WHERE r.id = ?")')
    assert any(tables_named(text) & QUEUE_TABLES for _, text in string_literals(tree))


def sql_outside_the_queue() -> Iterator[tuple[str, int, set[str]]]:
    """(module, line, tables) of every string outside src/mailgate/queue/ naming tables."""
    for name, path in modules():
        if name.startswith("queue/"):
            continue
        for line, text in string_literals(ast.parse(path.read_text())):
            named = tables_named(text)
            if named:
                yield name, line, named


def test_no_sql_on_the_queue_tables_outside_the_queue() -> None:
    found = [
        f"{name}:{line}: {sorted(named & QUEUE_TABLES)}"
        for name, line, named in sql_outside_the_queue()
        if named & QUEUE_TABLES
    ]
    assert not found, "SQL on the queue's tables outside src/mailgate/queue/:\n" + "\n".join(found)


def test_sql_outside_the_queue_is_the_event_stores_own() -> None:
    """The one other database (observe/eventstore.py) names only its own tables; the
    scan does find its SQL, so it would find the queue's too."""
    named = {table for _, _, tables in sql_outside_the_queue() for table in tables}
    assert named >= EVENT_STORE_TABLES, named
    assert named <= EVENT_STORE_TABLES | {"sqlite_master"}, named


def imports(path: Path) -> Iterator[str]:
    """Modules a file imports, type-only (TYPE_CHECKING) and function-local imports too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_receive_does_not_import_interchange() -> None:
    found = [
        f"{name}: {module}"
        for name, path in modules()
        if name.startswith("receive/")
        for module in imports(path)
        if module == "mailgate.interchange" or module.startswith("mailgate.interchange.")
    ]
    assert not found, found


def test_only_the_queue_and_the_event_store_use_sqlite3() -> None:
    """One read path: tools read the queue through queue/reader.py, never a raw sqlite3
    connection of their own (cli/track.py once did)."""
    found = [
        name
        for name, path in modules()
        if "sqlite3" in imports(path)
        and not name.startswith(("queue/", "observe/"))
        and name != "cli/events.py"  # reads the event store's file
    ]
    assert not found, found


def test_no_module_over_450_lines_but_the_declarative_tables() -> None:
    long = {
        name: count
        for name, path in modules()
        if (count := len(path.read_text().splitlines())) > MAX_LINES and name not in DECLARATIVE
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
