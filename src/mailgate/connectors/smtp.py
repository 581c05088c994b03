"""connectors.smtp: relay to a smarthost over SMTP, reusing connections.

Each interchange thread keeps its connection open across messages (a later message does
not pay a new handshake), resets it with RSET before reuse, and replaces it once,
transparently, when the server dropped it while idle; threads that share a connection
limit hand idle connections to each other (connectors.limits). All recipients of one
message go in one transaction, pipelined when the smarthost offers PIPELINING. Replies
map per recipient: 2xx delivered, 4xx deferred, 5xx failed; the remote reply is kept
verbatim. Connection and TLS errors are temporary, and they mark the smarthost down for
`down_for` seconds, during which new attempts are deferred at once rather than
hammering a dead host (events 2460/2461); an administrator's "try now" (`queue retry`,
`ctl wake`) clears that marking (event 2462). A connection the supervisor aborted
because its thread stalled says so in event 2460. An administrator's command on a
message being delivered cancels its attempt (`cancel`): the connection is broken, unless
the message is being handed over (DATA), where breaking it could make the smarthost
deliver it twice. The protocol is connectors.client's, the session connectors.smtp_session's.

Security: STARTTLS none/opportunistic/required with certificate verification
(and an optional CA file); AUTH only with a password read from a file, never
logged; EHLO uses the configured name (no DNS lookup of our own name).
Lines over 998 octets are broken with CRLF SPACE before DATA, as Postfix does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.connectors.client import ClientSettings
from mailgate.connectors.limits import Limits
from mailgate.connectors.smtp_session import (
    Connections,
    DestinationHealth,
    Peer,
    RelaySession,
)
from mailgate.observe import catalog
from mailgate.observe.events import EventLog

__all__ = ["DestinationHealth", "SmarthostConnector", "SmarthostSession", "SmarthostTarget"]


@dataclass(frozen=True, slots=True)
class SmarthostTarget:
    host: str
    port: int
    helo: str
    starttls: str = "opportunistic"
    verify: bool = True
    ca_file: str = ""
    username: str = ""
    password_file: str = ""
    timeout: float = 60.0
    down_for: float = 60.0
    chunking: bool = True  # BDAT when the smarthost offers CHUNKING
    password: str = field(default="", repr=False)  # inline; else read from password_file

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


class SmarthostConnector:
    name = "smarthost"

    def __init__(
        self,
        target: SmarthostTarget,
        events: EventLog,
        *,
        limits: Limits | None = None,
        name: str = "smarthost",
    ) -> None:
        self.name = name
        self.target = target
        self.events = events
        self.health = DestinationHealth(target.down_for)
        self.destinations = Connections(limits)  # shared by this connector's threads
        t = target
        self.peer = Peer("smarthost", t.host, t.port, t.host, t.down_for)
        self.settings = ClientSettings(
            helo=t.helo, starttls=t.starttls, verify=t.verify, ca_file=t.ca_file,
            username=t.username, password_file=t.password_file, timeout=t.timeout,
            password=t.password, chunking=t.chunking,
        )  # fmt: skip

    def open(self) -> SmarthostSession:
        return SmarthostSession(self)

    def clear_down(self, by: str) -> bool:
        """Try the smarthost at once again, if it was marked down; True if it was."""
        error = self.health.clear()
        if error is None:
            return False
        t = self.target
        self.events.emit(
            catalog.SMARTHOST_DOWN_CLEARED,
            connector=self.name, host=t.host, port=t.port, by=by, error=error,
        )  # fmt: skip
        return True


class SmarthostSession(RelaySession):
    """One thread's connection to the smarthost, opened lazily and reused."""

    BROKEN = "its smarthost connection was broken"

    def __init__(self, connector: SmarthostConnector) -> None:
        super().__init__(
            connector.name, connector.peer, connector.settings, connector.health,
            connector.events, connector.destinations,
        )  # fmt: skip
        self.c = connector
        self.t = connector.target

    def _report_failed(self, error: str) -> None:
        t = self.t
        self.events.emit(
            catalog.SMARTHOST_FAILED,
            host=t.host, port=t.port, connector=self.c.name, error=error, down_for=t.down_for,
        )  # fmt: skip

    def _report_recovered(self) -> None:
        t = self.t
        self.events.emit(
            catalog.SMARTHOST_RECOVERED, host=t.host, port=t.port, connector=self.c.name
        )
