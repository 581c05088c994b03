"""systemd notification (sd_notify): READY, STATUS and WATCHDOG over $NOTIFY_SOCKET.

A no-op when NOTIFY_SOCKET is unset. Watchdog pings are sent only while the
service judges itself healthy (no failed or stalled thread, no stalled connector,
the supervisor's own monitor turning), so a wedged service stops pinging and
systemd (WatchdogSec=) restarts it. Written against the documented datagram
protocol; no library needed for a few lines.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2_000_000 if usec.isdigit() and int(usec) else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send `KEY=value` lines; False (never an exception) if it could not be sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message, self.address)
            return True
        return False

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=status)

    def watchdog(self, status: str) -> bool:
        return self.send(WATCHDOG="1", STATUS=status)
