"""Wake-ups: a commit that made work due tells the connector's idle threads at once.

The queue's effects (effects.py) notify after each such commit; interchange threads
wait here between claims. A generation counter per connector, and a condition per
connector on one lock: a waiter passes the generation it last saw and returns as soon
as it changes, so a notification between two waits is never lost. New work wakes one
idle thread of its connector, not all of them (each woken thread claims, and claims
cost a commit). In a receive process the notification also goes as a datagram to the
interchange process. Waits are always bounded; the queue is the truth, a wake-up a hint.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mailgate.supervise import faults
from mailgate.supervise.handle import ThreadHandle


class Wakeup:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conds: dict[str, threading.Condition] = {}
        self._generation: dict[str, int] = {}
        self._everything = 0
        self._spills: dict[str, tuple[str, Callable[[], bool]]] = {}

    def _cond(self, connector: str) -> threading.Condition:
        cond = self._conds.get(connector)
        if cond is None:
            cond = self._conds[connector] = threading.Condition(self._lock)
        return cond

    def notify(self, *connectors: str) -> None:
        """Wake one idle thread of each connector named (and a spill's, see `spill`)."""
        with self._lock:
            for name in connectors:
                self._bump(name)
                spill = self._spills.get(name)
                if spill is not None and spill[1]():
                    self._bump(spill[0])

    def spill(self, connector: str, to: str, when: Callable[[], bool]) -> None:
        """From now on a wake-up of `connector` also wakes one thread waiting on `to`
        whenever `when()` holds (called under this object's lock: it must be quick). The
        postoffice's helper threads wait on their own key, so that new mail wakes the
        first thread alone, unless that one is stuck in a long delivery (worker.py)."""
        with self._lock:
            self._spills[connector] = (to, when)

    def _bump(self, name: str) -> None:
        self._generation[name] = self._generation.get(name, 0) + 1
        self._cond(name).notify(1)

    def notify_all(self) -> None:
        """Wake every waiting thread (stop requests, released leases)."""
        with self._lock:
            self._everything += 1
            for cond in self._conds.values():
                cond.notify_all()

    def generation(self, connector: str) -> int:
        with self._lock:
            return self._generation.get(connector, 0) + self._everything

    def wait(self, connector: str, seen: int, timeout: float) -> int:
        """Block until the connector's generation differs from `seen` or `timeout` passes."""
        with self._lock:
            faults.check("wakeup.wait")  # tests: an exception while holding the lock
            self._cond(connector).wait_for(
                lambda: self._generation.get(connector, 0) + self._everything != seen, timeout
            )
            return self._generation.get(connector, 0) + self._everything


def wakeup_path(data_dir: Path) -> Path:
    return data_dir / "run" / "wakeup.sock"


def bind_wakeup(path: Path) -> socket.socket:
    """The interchange process's datagram socket for wake-ups from receive processes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.settimeout(0.1)  # short, so a stop request ends the listener promptly
    return sock


class RemoteWakeup(Wakeup):
    """In a receive process: wake-ups also go, as datagrams, to the interchange process.

    Sending never blocks and never fails the caller: the queue is the truth, and the
    scheduler finds due work within a second even if a wake-up is lost.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._datagrams: dict[tuple[str, ...], bytes] = {}  # few: the connector sets seen

    def notify(self, *connectors: str) -> None:
        super().notify(*connectors)
        data = self._datagrams.get(connectors)
        if data is None:
            data = ",".join(connectors).encode()
            if len(self._datagrams) < 256:
                self._datagrams[connectors] = data
        with contextlib.suppress(OSError):
            self._sock.sendto(data, self._path)


PACE = 0.005  # seconds between two rounds of wake-ups from datagrams, at the most frequent
DRAIN = 256  # datagrams read at most per round


class WakeupListener:
    """Body of the `wakeup` thread of an interchange process: datagrams become wake-ups.

    Paced: the first datagram after a quiet spell wakes at once; while they keep coming
    (one per commit of each receive process), the ones that came in the last PACE seconds
    are read together and wake each connector named once. A flow of mail then costs this
    thread, and the connector threads it wakes, one round per PACE, not one per message
    (issue 14); a wake-up is at most PACE late, and the scheduler's poll stays behind it."""

    def __init__(self, sock: socket.socket, wakeup: Wakeup, pace: float = PACE) -> None:
        self.sock = sock
        self.wakeup = wakeup
        self.pace = pace

    def __call__(self, handle: ThreadHandle) -> None:
        woke = 0.0
        while not handle.stopping:
            handle.progress()
            try:
                first = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                if handle.wait(0.5):
                    return
                continue
            pause = woke + self.pace - time.monotonic()
            if pause > 0 and handle.wait(pause):
                return
            names = dict.fromkeys(_names(first))
            for data in self._waiting():
                names.update(dict.fromkeys(_names(data)))
            self.wakeup.notify(*names)
            woke = time.monotonic()

    def _waiting(self) -> list[bytes]:
        """The datagrams already queued, without waiting for more. Asked with a poll of no
        timeout first: on a socket with a timeout, Python waits up to that timeout for the
        socket to be readable before any recv, MSG_DONTWAIT or not (every round of wake-ups
        was 100 ms late, and deliveries with it)."""
        found: list[bytes] = []
        ready = select.poll()
        ready.register(self.sock, select.POLLIN)
        while len(found) < DRAIN and ready.poll(0):
            try:
                found.append(self.sock.recv(4096))
            except OSError:  # none left after all (or the socket closed): this round ends
                break
        return found


def _names(data: bytes) -> list[str]:
    return [n for n in data.decode(errors="replace").split(",") if n][:16]
