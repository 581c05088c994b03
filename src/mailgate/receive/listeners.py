"""The listening sockets of one instance: opened once, owned alone, shared by its workers.

One instance owns its ports: the master opens them, without SO_REUSEPORT, and its receive
workers inherit them (`Listeners.inherited`), so the kernel refuses any other socket on
them, a second mailgate included (with SO_REUSEPORT, any process of the same user could
join the port and take part of the mail). A dead worker's siblings keep serving, and
nothing waiting in the one accept queue is lost. A port in use raises PortInUse naming
the process that holds it (holder.py); other OSErrors reach the caller as they are.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from mailgate.config.schema import SmtpSettings, parse_hostport
from mailgate.errors import PortInUse
from mailgate.receive.board import SessionBoard
from mailgate.receive.holder import command_line, holder

BACKLOG = 512  # one accept queue for all the receive workers


@dataclass(frozen=True, slots=True)
class Listeners:
    """The listening sockets of one instance: SMTP, and implicit TLS if configured."""

    smtp: socket.socket
    implicit_tls: socket.socket | None = None
    sessions: SessionBoard | None = None  # the instance's sessions per address (board.py)

    def fds(self) -> dict[str, int]:
        found = {"smtp": self.smtp.fileno()}
        if self.implicit_tls is not None:
            found["implicit_tls"] = self.implicit_tls.fileno()
        return found

    @classmethod
    def inherited(cls, fds: dict[str, int]) -> Listeners:
        """The sockets a worker inherited from its master (see `fds`), and the session
        board with the row this worker owns (keys `sessions`, `session_rows`, `session_row`)."""
        tls = fds.get("implicit_tls")
        board = None
        if "sessions" in fds:
            board = SessionBoard(fds["sessions"], fds["session_rows"], fds["session_row"])
        return cls(
            socket.socket(fileno=fds["smtp"]),
            socket.socket(fileno=tls) if tls is not None else None,
            board,
        )

    def close(self) -> None:
        for sock in (self.smtp, self.implicit_tls):
            if sock is not None:
                sock.close()


def open_listeners(smtp: SmtpSettings) -> Listeners:
    """Bind and listen on smtp.listen (and smtp.implicit_tls_listen); PortInUse names the
    holder of a port in use, other OSErrors reach the caller as they are."""
    sock = bind(*parse_hostport(smtp.listen))
    if not smtp.implicit_tls_listen:
        return Listeners(sock)
    try:
        return Listeners(sock, bind(*parse_hostport(smtp.implicit_tls_listen)))
    except BaseException:
        sock.close()
        raise


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (numeric or resolvable host), owned alone: no SO_REUSEPORT.

    A port in use raises PortInUse naming the process that holds it; other OSErrors
    reach the caller."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says TCP. Without it, replies to pipelined commands wait on
    # Nagle and the client's delayed ACK (about 40 ms each).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # SO_REUSEADDR lets a restarted service bind over connections left in TIME_WAIT; it
    # never lets two sockets listen on one port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        pid = holder(port)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise PortInUse(shown, pid, command_line(pid) if pid else "") from None
    sock.setblocking(False)
    return sock
