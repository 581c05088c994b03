"""A commit thread that has failed for good fails what its callers wait for, at once.

Regression: when the group committer (or its flush thread) spent its restarts, the jobs
queued for it stayed queued, and the threads blocked on their futures (postoffice
deliveries, the scheduler) held the service's stop until its deadline (event 1005 naming
them, 10 s by default) although the service was already stopping with event 1002. Now
the supervisor's `on_fail` fails those futures with StoreError, and any submitted later.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from mailgate.errors import StoreError
from mailgate.observe.events import EventLog
from mailgate.queue import ops
from mailgate.queue.commit import Committer
from mailgate.queue.commit_sync import CommitSyncer
from mailgate.queue.sqlite import SqliteBackend
from mailgate.supervise.handle import ThreadHandle
from tests.integration.test_queue import message
from tests.integration.test_supervisor import supervisor
from tests.support.process import wait_for


def _backend(tmp_path: Path) -> SqliteBackend:
    backend = SqliteBackend(tmp_path / "queue.db", lock_timeout=None)
    backend.initialize()
    return backend


def test_a_committer_failed_for_good_fails_its_waiting_futures(tmp_path: Path) -> None:
    committer = Committer(_backend(tmp_path), EventLog())
    fatal: list[str] = []
    sup, _ = supervisor(max_restarts=0, on_fatal=fatal.append)
    waiting = committer.submit("insert", lambda conn: ops.insert_message(conn, message()))

    def body(handle: ThreadHandle) -> None:
        raise RuntimeError("the committer dies at every start")

    sup.spawn("commit", "commit", body, critical=True, on_fail=committer.fail_waiting)
    wait_for(lambda: fatal, 10, what="the committer failed for good")
    with pytest.raises(StoreError, match="commit thread has failed"):
        waiting.result(timeout=5)  # before the fix: waits for ever
    later = committer.submit("insert", lambda conn: ops.insert_message(conn, message()))
    assert later.done(), "a job submitted after the failure fails at once"
    with pytest.raises(StoreError):
        later.result(timeout=0)
    sup.stop_all([["commit"]], time.monotonic() + 5)


def test_a_flush_thread_failed_for_good_fails_the_batches_it_owed(tmp_path: Path) -> None:
    syncer = CommitSyncer(_backend(tmp_path), EventLog())
    fatal: list[str] = []
    sup, _ = supervisor(max_restarts=0, on_fatal=fatal.append)
    owed: Future[Any] = Future()
    owed.set_running_or_notify_cancel()
    syncer.put([(owed, "value", None)])  # committed, waiting for its flush

    def body(handle: ThreadHandle) -> None:
        raise RuntimeError("the flush thread dies at every start")

    sup.spawn("commit-sync", "commit", body, critical=True, on_fail=syncer.fail_waiting)
    wait_for(lambda: fatal, 10, what="the flush thread failed for good")
    with pytest.raises(StoreError, match="flush thread has failed"):
        owed.result(timeout=5)
    assert syncer.drained()
    later: Future[Any] = Future()
    later.set_running_or_notify_cancel()
    syncer.put([(later, "value", None)])
    with pytest.raises(StoreError):
        later.result(timeout=0)
    sup.stop_all([["commit-sync"]], time.monotonic() + 5)


def test_a_committer_waiting_for_its_restart_when_the_service_stops_fails_its_futures(
    tmp_path: Path,
) -> None:
    """The other way a committer is gone for good: another critical thread (the pickup's
    committer, say) failed first, and the stop began while this one waited out its
    restart's backoff. Regression: only a committer that spent its own restarts failed
    its futures, so the postoffice threads still waited out the deadline (event 1005)."""
    committer = Committer(_backend(tmp_path), EventLog())
    sup, _ = supervisor(max_restarts=5)
    sup._backoff = 60.0  # its restart would come long after the stop
    lives: list[int] = []

    def body(handle: ThreadHandle) -> None:
        lives.append(1)
        raise RuntimeError("the committer dies")

    sup.spawn("commit", "commit", body, critical=True, on_fail=committer.fail_waiting)
    wait_for(lambda: lives, 5, what="the committer's first life")
    waiting = committer.submit("insert", lambda conn: ops.insert_message(conn, message()))
    wait_for(lambda: sup.statistics().threads and not _alive(sup, "commit"), 5, what="its death")
    assert not waiting.done()
    sup.stop_all([["commit"]], time.monotonic() + 5)
    with pytest.raises(StoreError):
        waiting.result(timeout=0)
    assert len(lives) == 1


def _alive(sup: Any, name: str) -> bool:
    return bool({v.name: v for v in sup.statistics().threads}[name].alive)
