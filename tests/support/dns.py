"""A small authoritative DNS server on loopback for tests, answering from a table they set.

`DnsServer()` serves UDP and TCP on one 127.0.0.1 port from a thread (dnspython parses and
builds every message). Records are added per name and type from their text form
(`add("example.test", "MX", "10 mx.example.test.")`; `mx`, `a`, `aaaa`, `null_mx` are
shorthands); a CNAME held for a name is followed within the table. A name the table does not
hold is NXDOMAIN; a held name without the asked type is NOERROR with no answer (NODATA).
Any name can be switched to answer SERVFAIL or NXDOMAIN, to answer nothing (`drop`: the
client times out), or to truncate over UDP (the client must retry over TCP). Every query is
recorded in `queries`. Unparseable packets are ignored. Loopback only; for tests.
"""

from __future__ import annotations

import contextlib
import enum
import selectors
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

UDP_LIMIT = 512  # without EDNS, RFC 1035's limit
TCP_LIMIT = 65535


class Mode(enum.Enum):
    ANSWER = "answer"
    SERVFAIL = "servfail"
    NXDOMAIN = "nxdomain"
    DROP = "drop"
    TRUNCATE = "truncate"  # over UDP only: TC set, no records


@dataclass(frozen=True, slots=True)
class Query:
    name: str  # as asked, without the final dot, lower case
    rdtype: str  # "MX", "A", ...
    transport: str  # "udp" or "tcp"


class DnsServer:
    """An authoritative server for whatever names its table holds."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.queries: list[Query] = []
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._modes: dict[dns.name.Name, Mode] = {}
        self._lock = threading.Lock()
        self.udp, self.tcp = _bind_pair(host)
        self.port: int = self.udp.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- the table -------------------------------------------------------------------------------
    def add(self, name: str, rdtype: str, *texts: str, ttl: int = 300) -> None:
        """Add records of one type to `name` (texts in zone-file form, names absolute)."""
        owner = dns.name.from_text(name)
        kind = dns.rdatatype.from_text(rdtype)
        with self._lock:
            rrset = self._records.get((owner, kind))
            if rrset is None:
                rrset = self._records[(owner, kind)] = dns.rrset.RRset(
                    owner, dns.rdataclass.IN, kind
                )
            for text in texts:
                rrset.add(dns.rdata.from_text(dns.rdataclass.IN, kind, text), ttl)

    def mx(self, name: str, *exchanges: tuple[int, str]) -> None:
        self.add(name, "MX", *(f"{pref} {_absolute(host)}" for pref, host in exchanges))

    def null_mx(self, name: str) -> None:
        """RFC 7505: the domain accepts no mail."""
        self.add(name, "MX", "0 .")

    def a(self, name: str, *addresses: str) -> None:
        self.add(name, "A", *addresses)

    def aaaa(self, name: str, *addresses: str) -> None:
        self.add(name, "AAAA", *addresses)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        owner = dns.name.from_text(name)
        with self._lock:
            for key in [k for k in self._records if k[0] == owner]:
                if rdtype is None or key[1] == dns.rdatatype.from_text(rdtype):
                    del self._records[key]

    def set_mode(self, name: str, mode: Mode) -> None:
        with self._lock:
            self._modes[dns.name.from_text(name)] = mode

    def servfail(self, name: str) -> None:
        self.set_mode(name, Mode.SERVFAIL)

    def nxdomain(self, name: str) -> None:
        self.set_mode(name, Mode.NXDOMAIN)

    def drop(self, name: str) -> None:
        self.set_mode(name, Mode.DROP)

    def truncate(self, name: str) -> None:
        self.set_mode(name, Mode.TRUNCATE)

    def answer(self, name: str) -> None:
        """Back to answering `name` from the table."""
        self.set_mode(name, Mode.ANSWER)

    # --- answering -------------------------------------------------------------------------------
    def respond(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query message, or None to send nothing."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if len(query.question) != 1:
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.FORMERR)
            return reply.to_wire()
        question = query.question[0]
        self.queries.append(
            Query(
                question.name.to_text(omit_final_dot=True).lower(),
                dns.rdatatype.to_text(question.rdtype),
                transport,
            )
        )
        with self._lock:
            mode = self._modes.get(question.name, Mode.ANSWER)
            if mode is Mode.DROP:
                return None
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            if mode is Mode.SERVFAIL:
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif mode is Mode.TRUNCATE and transport == "udp":
                reply.flags |= dns.flags.TC
            elif mode is Mode.NXDOMAIN or not self._holds(question.name):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            else:
                reply.answer.extend(self._lookup(question.name, question.rdtype))
        limit = TCP_LIMIT if transport == "tcp" else max(UDP_LIMIT, query.payload)
        try:
            return reply.to_wire(max_size=limit)
        except dns.exception.TooBig:
            reply.answer.clear()
            reply.flags |= dns.flags.TC
            return reply.to_wire()

    def _holds(self, name: dns.name.Name) -> bool:
        return any(owner == name for owner, _ in self._records)

    def _lookup(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> list[dns.rrset.RRset]:
        found: list[dns.rrset.RRset] = []
        for _ in range(8):  # a CNAME chain within the table, never a loop
            rrset = self._records.get((name, rdtype))
            if rrset is not None:
                return [*found, rrset]
            alias = self._records.get((name, dns.rdatatype.CNAME))
            if alias is None or rdtype == dns.rdatatype.CNAME:
                return found
            found.append(alias)
            name = alias[0].target
        return found

    # --- serving ---------------------------------------------------------------------------------
    def start(self) -> None:
        assert self._thread is None, "already started"
        self._thread = threading.Thread(target=self._serve, name="dns-server", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the DNS server thread did not stop"
        for sock in (self.udp, self.tcp, self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> DnsServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks this server only."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = lifetime
        resolver.timeout = lifetime
        return resolver

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ, "udp")
        sel.register(self.tcp, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        buffers: dict[socket.socket, bytes] = {}
        try:
            while not self._stopping:
                for key, _ in sel.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if key.data == "udp":
                        self._serve_udp()
                    elif key.data == "listen":
                        conn, _ = self.tcp.accept()
                        conn.setblocking(False)
                        buffers[conn] = b""
                        sel.register(conn, selectors.EVENT_READ, "tcp")
                    elif key.data == "tcp" and not self._serve_tcp(sock, buffers):
                        sel.unregister(sock)
                        del buffers[sock]
                        sock.close()
        finally:
            for conn in buffers:
                conn.close()
            sel.close()

    def _serve_udp(self) -> None:
        try:
            wire, peer = self.udp.recvfrom(TCP_LIMIT)
        except OSError:
            return
        reply = self.respond(wire, "udp")
        if reply is not None:
            with contextlib.suppress(OSError):
                self.udp.sendto(reply, peer)

    def _serve_tcp(self, conn: socket.socket, buffers: dict[socket.socket, bytes]) -> bool:
        """Read what came; answer each complete message. False when the client is gone."""
        try:
            data = conn.recv(TCP_LIMIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        buffers[conn] += data
        while len(buffers[conn]) >= 2:
            (length,) = struct.unpack("!H", buffers[conn][:2])
            if len(buffers[conn]) < 2 + length:
                break
            wire, buffers[conn] = buffers[conn][2 : 2 + length], buffers[conn][2 + length :]
            reply = self.respond(wire, "tcp")
            if reply is not None:  # a dropped query leaves the client waiting, as over UDP
                conn.setblocking(True)
                try:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return False
                finally:
                    conn.setblocking(False)
        return True


def _absolute(host: str) -> str:
    return host if host.endswith(".") else host + "."


def _bind_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port (a few tries: the port may be taken)."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp
    raise OSError(f"no port free for both UDP and TCP on {host}")
