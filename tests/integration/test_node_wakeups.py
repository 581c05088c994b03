"""Wake-ups between nodes over PostgreSQL LISTEN/NOTIFY (queue/notify.py): a commit's
wake-up on one node wakes the idle threads of that connector on the others, and not
the sender a second time; `announce_now` wakes every node's threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.observe.events import EventLog
from mailgate.queue.notify import NodeWakeup, WakeChannel, announce_now, wake_channel
from mailgate.queue.postgres import PostgresBackend
from mailgate.queue.sqlite import SqliteBackend
from mailgate.supervise.handle import ThreadHandle
from tests.support.process import wait_for
from tests.support.stores import pg_schema

Node = tuple[NodeWakeup, WakeChannel]


@pytest.fixture
def nodes() -> Iterator[tuple[Node, Node]]:
    with pg_schema() as (_, url):
        backend = PostgresBackend(url)
        handles, threads, made = [], [], []
        for _ in range(2):
            wakeup = NodeWakeup()
            channel = wake_channel(backend, EventLog())
            assert channel is not None
            wakeup.channel = channel
            handle = ThreadHandle("listen", "listen", None)
            thread = threading.Thread(target=channel.run, args=(handle, wakeup.hear))
            thread.start()
            handles.append(handle)
            threads.append(thread)
            made.append((wakeup, channel))
        try:
            yield made[0], made[1]
        finally:
            for handle in handles:
                handle.stop_event.set()
            for thread in threads:
                thread.join(10)
            backend.close()


def test_a_wake_up_on_one_node_wakes_the_other(nodes: tuple[Node, Node]) -> None:
    (a, a_channel), (b, b_channel) = nodes
    # Both listen before anything is sent (a NOTIFY reaches only those listening).
    wait_for(lambda: a_channel.listening and b_channel.listening, 10, what="both listening")
    seen = b.generation("postoffice")
    a.notify("postoffice")
    wait_for(lambda: b.generation("postoffice") != seen, 10, what="node b woken")
    assert b.generation("smarthost") == 0, "only the connector named"
    assert a.generation("postoffice") == 1, "the sender is not woken again by its own NOTIFY"
    assert a_channel.sent == 1 and b_channel.heard == 1


def test_announce_now_wakes_every_node(nodes: tuple[Node, Node]) -> None:
    (a, a_channel), (b, b_channel) = nodes
    wait_for(lambda: a_channel.listening and b_channel.listening, 10, what="both listening")
    before = (a.generation("x"), b.generation("x"))
    announce_now(a_channel._backend)
    wait_for(lambda: (a.generation("x"), b.generation("x")) != before and
             a.generation("x") != before[0] and b.generation("x") != before[1], 10,
             what="every node woken")  # fmt: skip


def test_sqlite_has_no_channel(tmp_path: Path) -> None:
    assert wake_channel(SqliteBackend(tmp_path / "q.db"), EventLog()) is None
