"""Postoffice flushes side by side (postoffice/flush.py, issue 14.2b) on real files: a batch's
files and mailbox directories are fsynced together before its outcomes are recorded, and a
copy cut short before its flush (a power failure) is not taken for a delivery."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.connectors.postoffice import PostofficeConnector
from mailgate.observe.events import EventLog
from mailgate.postoffice.flush import Flusher
from mailgate.postoffice.tree import Postoffice
from mailgate.supervise.handle import ThreadHandle
from tests.integration.test_postoffice import ALICE, BODY, MAP, claim, files
from tests.support.process import wait_for


@pytest.fixture
def po(tmp_path: Path) -> Postoffice:
    po = Postoffice(tmp_path / "postoffice", MAP)
    po.add(ALICE)
    return po


@pytest.fixture
def flusher() -> Iterator[Flusher]:
    flusher = Flusher()
    handles = [ThreadHandle(f"postoffice-flush-{n}", "flush", None) for n in (1, 2)]
    threads = [threading.Thread(target=flusher.run, args=(h,)) for h in handles]
    for thread in threads:
        thread.start()
    wait_for(lambda: flusher._running == 2, 10, what="the flush threads")
    yield flusher
    for handle in handles:
        handle.stop_event.set()
        flusher.wake()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def test_a_batch_is_synced_together_at_flush(po: Postoffice, flusher: Flusher) -> None:
    connector = PostofficeConnector(po, MAP, EventLog(), hostname="mx.test", flusher=flusher)
    session = connector.open()
    for rid in range(1, 6):
        assert session.deliver_one(claim(rid=rid, queue_id=f"Q{rid}"), BODY).startswith("250")
    assert len(files(po)) == 5 and files(po, "tmp") == []
    assert flusher.fsyncs == 0, "nothing synced one by one"
    session.flush()
    assert (flusher.batches, flusher.fsyncs) == (1, 6), "five files and one new/ in one batch"
    session.close()


def test_fsync_failure_is_raised_after_the_others(tmp_path: Path, flusher: Flusher) -> None:
    good = [os.open(tmp_path / f"f{n}", os.O_CREAT | os.O_WRONLY) for n in range(3)]
    bad = os.open(tmp_path / "bad", os.O_CREAT | os.O_WRONLY)
    os.close(bad)  # EBADF: what a failing disk's EIO would be to the caller
    try:
        with pytest.raises(OSError):
            flusher.fsync_all([*good, bad])
        flusher.fsync_all(good)  # the threads live on
    finally:
        for fd in good:
            os.close(fd)


def test_without_flush_threads_the_caller_syncs(tmp_path: Path) -> None:
    fds = [os.open(tmp_path / f"f{n}", os.O_CREAT | os.O_WRONLY) for n in range(3)]
    try:
        Flusher().fsync_all(fds)
    finally:
        for fd in fds:
            os.close(fd)


def test_redelivery_replaces_a_copy_cut_short_before_its_flush(po: Postoffice) -> None:
    session = PostofficeConnector(po, MAP, EventLog(), hostname="mx.test").open()
    session.deliver_one(claim(), BODY)
    [name] = files(po)
    path = po.root / "LOCAL/MAIN/ALICE/new" / name
    complete = path.read_bytes()
    session.close()  # the thread dies before its flush; power fails: the data never landed
    os.truncate(path, 0)
    again = PostofficeConnector(po, MAP, EventLog(), hostname="mx.test").open()
    reply = again.deliver_one(claim(redelivery=True), BODY)
    again.flush()
    assert reply == "250 2.0.0 delivered to MS:LOCAL/MAIN/ALICE", reply
    assert files(po) == [name] and path.read_bytes() == complete


def test_redelivery_keeps_a_complete_copy(po: Postoffice) -> None:
    session = PostofficeConnector(po, MAP, EventLog(), hostname="mx.test").open()
    session.deliver_one(claim(), BODY)
    session.flush()
    reply = session.deliver_one(claim(redelivery=True), BODY)
    assert reply.startswith("250 2.0.0 already in mailbox"), reply
    assert len(files(po)) == 1
