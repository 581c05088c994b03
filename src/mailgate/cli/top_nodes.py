"""`mailgate top`'s nodes table: every node sharing the queue, as `ctl status` has them.

One row per node: its state (alive, dead, stopped), where it runs, how long ago it
heart-beat, and what its busy threads work on (the summary each node writes with its
heart-beat, so a node's work shows in `top` on any other node).
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

NODE_STYLES = {"alive": "green", "dead": "bold red", "stopped": "dim"}
SHOWN = 3  # busy threads named per node; the rest are counted


def nodes_table(status: dict[str, Any], age: Any) -> RenderableType:
    table = Table(title="nodes", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for name in ("node", "state", "host", "pid", "heartbeat", "threads", "work"):
        table.add_column(name, no_wrap=name != "work")
    for node in status.get("nodes") or []:
        threads = node.get("work") or []
        busy = [t for t in threads if (t.get("work") or {}).get("queue_id")]
        table.add_row(
            str(node.get("name")),
            Text(str(node.get("state")), style=NODE_STYLES.get(str(node.get("state")), "")),
            str(node.get("host")),
            str(node.get("pid")),
            f"{age(node.get('heartbeat_age'))} ago",
            f"{len(busy)}/{len(threads)} busy",
            _busy(busy),
        )
    return table


def _busy(busy: list[dict[str, Any]]) -> str:
    words = [f"{t.get('thread')}: {(t.get('work') or {}).get('queue_id')}" for t in busy[:SHOWN]]
    if len(busy) > SHOWN:
        words.append(f"+{len(busy) - SHOWN}")
    return ", ".join(words)
