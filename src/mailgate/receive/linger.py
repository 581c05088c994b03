"""receive.linger: a lone session's thread stays awake for its client's next command.

After a reply, a session's thread normally goes back to the event loop, which sleeps in
epoll until the client's next command. On a virtual machine a sleeping thread's virtual CPU
halts, and the wake-up that follows costs tens of microseconds: at one session, measured
from the packets on the loopback (bench/cycle.py), mailgate answered MAIL, RCPT and DATA in
50-70 us where a thread that had not slept answered in 15-30 us (issue 14). `linger` keeps
the thread running, polling the session's socket, until the client's bytes are there or
`seconds` passed, whichever is first; then the loop reads them at once.

Contract: only for a receive process with one session open and no commit awaited for it
(receive/session.py decides): any other work of the loop (another session, a commit's
result, a timer) would wait for the spin. The wait is bounded by `seconds` (the [smtp]
reply_linger setting, 0 = never), and it costs CPU only while a lone client is between
a reply and its next command. Failure: a socket that cannot be polled (closed meanwhile)
ends the wait. Security: nothing is read here; the bytes stay for the session's own parser.
"""

from __future__ import annotations

import select
import time

_POLLED = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


def linger(fileno: int, seconds: float) -> bool:
    """Poll `fileno` until the loop has something to do on it (True: bytes, a hangup, an
    error, a descriptor closed meanwhile) or `seconds` passed (False)."""
    poller = select.poll()
    try:
        poller.register(fileno, _POLLED)
    except (OSError, ValueError):
        return False
    deadline = time.perf_counter() + seconds
    while True:
        try:
            if poller.poll(0):
                return True
        except OSError:
            return False
        if time.perf_counter() >= deadline:
            return False
