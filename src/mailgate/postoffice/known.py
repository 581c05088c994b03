"""Mailboxes lately found to exist: the RCPT check's yes, kept for a second.

Every RCPT to a postoffice address asks whether its Maildir exists, six lstat calls
(`Postoffice.exists`), about a twentieth of a lone SMTP session's CPU per message. A yes
is kept for `ttl` seconds (1 s), for at most `size` mailboxes (4,096; the one found
longest ago goes first); a no is never kept, so a mailbox just made takes mail at once.
A mailbox removed is refused within `ttl`; mail accepted for it meanwhile is what a
mailbox removed between RCPT and delivery already meets: delivery walks the tree again,
safely, and defers or bounces.

Security: an answer for the RCPT reply only. It never names a path: delivery opens the
mailbox through its own descriptor walk under the postoffice root.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from mailgate.postoffice.address import PostofficeAddress


class KnownMailboxes:
    """`exists`, with its recent yes answers kept. Thread-safe: the receive worker's event
    loop and its pickup thread share one; the file system is asked outside the lock."""

    def __init__(
        self,
        exists: Callable[[PostofficeAddress], bool],
        *,
        ttl: float = 1.0,
        size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._exists = exists
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._found: OrderedDict[PostofficeAddress, float] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, address: PostofficeAddress) -> bool:
        now = self._clock()
        found = self._found.get(address)
        if found is not None and now - found < self._ttl:
            return True
        exists = self._exists(address)
        with self._lock:
            if not exists:
                self._found.pop(address, None)
                return False
            self._found[address] = now
            self._found.move_to_end(address)
            if len(self._found) > self._size:
                self._found.popitem(last=False)
        return True
