"""The interchange's `wakeup` thread (queue/wakeup.py) over a real datagram socket: the
first datagram after a quiet spell wakes at once, the ones that follow within its pace are
read together and wake each connector once (issue 14: one round per pace, not per message)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.queue.wakeup import Wakeup, WakeupListener, bind_wakeup
from mailgate.supervise.handle import ThreadHandle
from tests.support.process import wait_for


class Noting(Wakeup):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []

    def notify(self, *connectors: str) -> None:
        self.calls.append(connectors)
        super().notify(*connectors)


@contextlib.contextmanager
def listener(
    tmp_path: Path, pace: float, timeout: float | None = None
) -> Iterator[tuple[Noting, socket.socket, Path]]:
    """A real `wakeup` thread on a real datagram socket (its timeout set to `timeout`)."""
    path = tmp_path / "run" / "wakeup.sock"
    sock = bind_wakeup(path)
    if timeout is not None:
        sock.settimeout(timeout)
    wakeup = Noting()
    handle = ThreadHandle("wakeup", "wakeup", None)
    thread = threading.Thread(target=WakeupListener(sock, wakeup, pace=pace), args=(handle,))
    thread.start()
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        yield wakeup, sender, path
    finally:
        handle.stop_event.set()
        thread.join(10)  # its recv times out, and it sees the stop
        sender.close()
        sock.close()
    assert not thread.is_alive()


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[Noting, socket.socket, Path]]:
    # A long pace, so "within the pace" holds however slow the machine is.
    with listener(tmp_path, pace=1.0) as found:
        yield found


def test_datagrams_that_keep_coming_wake_each_connector_once_per_round(
    listening: tuple[Noting, socket.socket, Path],
) -> None:
    wakeup, sender, path = listening
    sender.sendto(b"postoffice", str(path))
    wait_for(lambda: wakeup.calls, 5, what="the first wake-up")
    assert wakeup.calls == [("postoffice",)], "the first after a quiet spell wakes at once"
    for data in (b"smarthost", b"postoffice", b"smarthost,bounces", b""):
        sender.sendto(data, str(path))
    wait_for(lambda: len(wakeup.calls) == 2, 5, what="the second round")
    assert wakeup.calls[1] == ("smarthost", "postoffice", "bounces")
    assert wakeup.generation("smarthost") == 1 and wakeup.generation("postoffice") == 2


def test_a_lone_datagram_wakes_without_waiting_for_the_sockets_timeout(tmp_path: Path) -> None:
    """Regression: reading what else was queued waited for the socket's timeout first (a
    recv on a socket with a timeout polls for it), so every wake-up came that late."""
    with listener(tmp_path, pace=0.0, timeout=5) as (wakeup, sender, path):  # 5 s: the bug's wait
        sender.sendto(b"postoffice", str(path))
        wait_for(lambda: wakeup.calls, 2, what="the wake-up, well before the timeout")
        assert wakeup.calls == [("postoffice",)]
