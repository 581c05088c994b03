"""The flat, short exception hierarchy of mailgate.

Delivery ends in one of three outcomes; library errors (socket, smtplib, OS) are
translated into `TemporaryFailure` or `PermanentFailure` where they enter a
connector, so the interchange never has to know a library's exception types.
"""

from __future__ import annotations

import errno


class MailgateError(Exception):
    """Base of every error mailgate raises on purpose."""


class ConfigError(MailgateError):
    """The configuration is invalid; `problems` lists (dotted path, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {reason}" for path, reason in problems))


class AddressError(MailgateError):
    """An address cannot be parsed or names something it must not."""


class StoreError(MailgateError):
    """The queue store failed; `full` is true when the cause is lack of space."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        self.full = full
        super().__init__(message)


class AlreadyRunning(MailgateError):
    """Another mailgate holds the data directory lock."""

    def __init__(self, data_dir: str, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "unknown pid"
        super().__init__(f"mailgate is already running on {data_dir} ({who})")


class StoreInUse(MailgateError):
    """Another mailgate, on another data directory, holds the queue store's lock."""

    def __init__(self, store: str, pid: int | None, data_dir: str) -> None:
        self.store, self.pid, self.data_dir = store, pid, data_dir
        who = f"pid {pid}" if pid else "unknown pid"
        super().__init__(f"the queue {store} is in use by mailgate {who} on {data_dir}")


class PortInUse(MailgateError, OSError):
    """Another process listens on a port this service must own; `pid` names it if known."""

    def __init__(self, listen: str, pid: int | None, command: str = "") -> None:
        self.listen, self.pid, self.command = listen, pid, command
        who = f"pid {pid}" + (f" ({command})" if command else "") if pid else "an unknown pid"
        self.holder = who
        super().__init__(errno.EADDRINUSE, f"port {listen} is already in use by {who}")


class DeliveryFailure(MailgateError):
    """A delivery attempt did not succeed; `reply` is kept with the attempt."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        super().__init__(reply)


class TemporaryFailure(DeliveryFailure):
    """Retry later: 4xx replies, connection errors, a full or failing mailbox."""


class PermanentFailure(DeliveryFailure):
    """Do not retry: 5xx replies, unknown mailbox. The sender gets a bounce."""
