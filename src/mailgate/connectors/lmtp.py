"""connectors.lmtp: deliver to an LMTP server (Dovecot, Cyrus) over TCP or a Unix socket.

LMTP (RFC 2033) is SMTP without a queue at the server: after the message it answers once
per accepted recipient, in RCPT order, so each recipient is recorded on its own
(delivered, deferred or failed, with the server's reply): one over quota is refused
while the others are delivered. A refusal of DATA itself applies to every accepted
recipient. If the connection is lost after the message was sent, the replies already
read stand and the others are deferred (they may have been delivered; a retry could
duplicate them, never lose them). Otherwise the session is the smarthost's
(connectors.smtp_session): a connection per thread, reused with RSET and replaced once
when it was dropped while idle, PIPELINING when offered, lines over 998 octets broken,
connection failures marking the server down (events 2480-2482), cancel and abort.

Security: an LMTP server trusts its clients (it delivers to any local user and does no
relay check), so it belongs on a Unix socket or loopback: there is no AUTH, and STARTTLS
is off unless asked for. Whether a full mailbox refuses (5xx, a bounce) or defers (4xx) is
the server's choice: Dovecot's `quota_full_tempfail = yes` makes it defer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.connectors.client import ClientSettings
from mailgate.connectors.limits import Limits
from mailgate.connectors.smtp_session import Connections, DestinationHealth, Peer, RelaySession
from mailgate.observe import catalog
from mailgate.observe.events import EventLog

LMTP_PORT = 24


@dataclass(frozen=True, slots=True)
class LmtpTarget:
    host: str  # a host name or address, or the absolute path of a Unix socket
    lhlo: str  # the name mailgate gives in LHLO
    port: int = LMTP_PORT  # unused for a Unix socket
    starttls: str = "none"
    verify: bool = True
    ca_file: str = ""
    timeout: float = 60.0
    down_for: float = 30.0
    chunking: bool = True  # BDAT when the server offers CHUNKING

    def __post_init__(self) -> None:
        if "/" in self.host and not self.host.startswith("/"):
            raise ValueError(f"LMTP socket path {self.host!r} is not absolute")


class LmtpConnector:
    def __init__(
        self,
        target: LmtpTarget,
        events: EventLog,
        *,
        name: str = "lmtp",
        limits: Limits | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.events = events
        self.health = DestinationHealth(target.down_for)
        self.destinations = Connections(limits)  # shared by this connector's threads
        t = target
        self.peer = Peer("LMTP server", t.host, t.port, t.host, t.down_for)
        self.settings = ClientSettings(
            helo=t.lhlo, starttls=t.starttls, verify=t.verify, ca_file=t.ca_file,
            timeout=t.timeout, lmtp=True, chunking=t.chunking,
        )  # fmt: skip

    def open(self) -> LmtpSession:
        return LmtpSession(self)

    def clear_down(self, by: str) -> bool:
        """Try the server at once again, if it was marked down; True if it was."""
        error = self.health.clear()
        if error is None:
            return False
        self.events.emit(
            catalog.LMTP_DOWN_CLEARED,
            address=self.peer.name, connector=self.name, by=by, error=error,
        )  # fmt: skip
        return True


class LmtpSession(RelaySession):
    """One thread's connection to the LMTP server, opened lazily and reused."""

    BROKEN = "its LMTP connection was broken"

    def __init__(self, connector: LmtpConnector) -> None:
        super().__init__(
            connector.name, connector.peer, connector.settings, connector.health,
            connector.events, connector.destinations,
        )  # fmt: skip
        self.c = connector

    def _report_failed(self, error: str) -> None:
        self.events.emit(
            catalog.LMTP_FAILED, address=self.peer.name, connector=self.c.name, error=error,
            down_for=self.peer.down_for,
        )  # fmt: skip

    def _report_recovered(self) -> None:
        self.events.emit(catalog.LMTP_RECOVERED, address=self.peer.name, connector=self.c.name)
