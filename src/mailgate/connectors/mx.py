"""connectors.mx: deliver straight to each recipient domain's mail hosts, as an internet MTA does.

Recipients are grouped by domain, one transaction per domain. Its hosts (connectors.resolve,
best first) are tried in turn within one attempt, at most `max_addresses` addresses: one
that refuses the connection, stays silent, greets with 4xx/5xx, fails EHLO or TLS, or goes
away before taking the message is passed over (event 2486), and recipients a host answers
4xx go to the next; a 5xx is final for the recipients it concerns, and so is a host's limit
(deferred, 2488: it spares that host's provider). Recipients no host took are deferred with
the last reply; a connection lost after the whole message defers with no other host (it may
have been delivered). Null MX bounces at once with 556 5.1.10 (2484), a missing domain or
host address with 5.1.2/5.4.4 (2485); a failed lookup defers (2483). TLS is opportunistic
by default (Postfix's `smtp_tls_security_level = may`): STARTTLS when offered, no
certificate check, a failed handshake retried in plain text (2487); `verify` checks the MX
name and never falls back. Connections stay open per mail host between messages (RSET
before reuse), at most KEEP_OPEN per thread for `idle_for` seconds, handed between threads
under the limits (connectors.limits; destination: the host's name). DNS carries no ports:
`port` (25) is every host's. Security: EHLO gives the configured name, never a DNS answer.
"""

from __future__ import annotations

import contextlib
import smtplib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import dns.resolver

from mailgate.connectors.client import (
    ClientSettings,
    ConnectionLost,
    TlsFailed,
    error_text,
    open_client,
    quit_and_close,
    rset,
)
from mailgate.connectors.limits import Limits, Slot
from mailgate.connectors.resolve import DnsSettings, LookupFailure, MailHost, MailResolver
from mailgate.connectors.smtp_session import ClientSession, Connections
from mailgate.errors import TemporaryFailure
from mailgate.interchange.connector import Result
from mailgate.model import Claim, Disposition
from mailgate.observe import catalog
from mailgate.observe.events import EventLog


class MxConnector:
    def __init__(
        self,
        helo: str,
        events: EventLog,
        *,
        name: str = "mx",
        dns: DnsSettings | None = None,
        port: int = 25,
        starttls: str = "opportunistic",
        verify: bool = False,
        ca_file: str = "",
        timeout: float = 60.0,
        limits: Limits | None = None,
        max_addresses: int = 5,
        idle_for: float = 10.0,
        chunking: bool = True,
    ) -> None:
        self.name = name
        self.events = events
        self.dns = dns or DnsSettings()
        self.port = port
        self.settings = ClientSettings(
            helo=helo, starttls=starttls, verify=verify, ca_file=ca_file, timeout=timeout,
            chunking=chunking,
        )  # fmt: skip
        self.max_addresses = max_addresses
        self.idle_for = idle_for
        self.destinations = Connections(limits)  # shared by this connector's threads
        self.cache = dns_cache()

    def open(self) -> MxSession:
        return MxSession(self)


def dns_cache() -> dns.resolver.LRUCache:
    return dns.resolver.LRUCache(max_size=10_000)


@dataclass(slots=True)
class _Held:
    slot: Slot[smtplib.SMTP]
    address: str
    used_at: float


class _Passed(Exception):
    """This address took nothing: try the next one; `reply` says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(slots=True)
class _Domain:
    """One domain's part of a message while its hosts are tried."""

    name: str
    claims: list[Claim]
    results: list[Result | None]
    last: str

    def pending(self) -> list[int]:
        return [
            i
            for i, r in enumerate(self.results)
            if r is None or r.disposition is Disposition.DEFERRED
        ]


class MxSession(ClientSession):
    """One thread's resolver and connections to mail hosts (see the module doc)."""

    BROKEN = "its connection to the mail host was broken"
    KEEP_OPEN = 8  # connections to mail hosts one thread keeps between messages

    def __init__(self, connector: MxConnector) -> None:
        super().__init__(connector.name, connector.events, connector.destinations)
        self.c = connector
        self.resolver = MailResolver(connector.dns, cache=connector.cache)
        self._held: dict[str, _Held] = {}  # by host name, least recently used first
        self.connections = 0  # opened by this session

    def _deliver(self, claims: Sequence[Claim], body: bytes, queue_id: str) -> list[Result]:
        self._expire()
        results: list[Result | None] = [None] * len(claims)
        for domain, indexes in _by_domain(claims):
            group = [claims[i] for i in indexes]
            for index, result in zip(indexes, self._to_domain(domain, group, body), strict=True):
                results[index] = result
        self._trim()
        return [r for r in results if r is not None]

    def _to_domain(self, domain: str, claims: list[Claim], body: bytes) -> list[Result]:
        queue_id = claims[0].queue_id
        if not domain:
            return [Result(Disposition.FAILED, "553 5.1.3 no domain in the address")] * len(claims)
        try:
            hosts = self.resolver.mail_hosts(domain)
        except LookupFailure as failure:
            self._lookup_failed(failure, domain, queue_id, len(claims))
            outcome = Disposition.FAILED if failure.permanent else Disposition.DEFERRED
            return [Result(outcome, failure.reply)] * len(claims)
        todo = _Domain(domain, claims, [None] * len(claims), f"451 4.4.1 no mail host of {domain}")
        candidates = [(h, a) for h in hosts for a in h.addresses][: self.c.max_addresses]
        answered: set[str] = set()  # hosts that took part: their other addresses are skipped
        for n, (host, address) in enumerate(candidates):
            if host.name in answered:
                continue
            try:
                final = self._via(host, address, todo, body)
            except _Passed as passed:
                todo.last = passed.reply
                left = any(h.name not in answered for h, _ in candidates[n + 1 :])
                self._passed(todo, host, address, passed.reply, left)
                continue
            if final or not todo.pending():
                break
            answered.add(host.name)  # recipients it deferred go to the next host
        return self._finished(todo)

    def _finished(self, todo: _Domain) -> list[Result]:
        return [r or Result(Disposition.DEFERRED, todo.last) for r in todo.results]

    def _via(self, host: MailHost, address: str, todo: _Domain, body: bytes) -> bool:
        """Send the domain's pending recipients through one host; whether that is final
        (no other host may be tried). _Passed if it took nothing."""
        pending = todo.pending()
        claims = [todo.claims[i] for i in pending]
        queue_id = claims[0].queue_id
        for attempt in (1, 2):
            reused = False
            try:
                self._wait_for_rate(host.name, queue_id)
                with self._using():
                    conn, reused = self._connection(host, address, queue_id)
                    sent = self._send(
                        conn, claims, body, lmtp=False, remote=host.name, kind="mail host",
                        chunking=self.c.settings.chunking,
                    )  # fmt: skip
                self._sent(host.name)
            except ConnectionLost as exc:
                self._drop(host.name)
                self._check_cancelled(queue_id)
                if not exc.after_data:
                    if reused and attempt == 1 and not self._stall_aborted:
                        continue  # an idle connection the host closed: one fresh try
                    raise self._passing(host, address, exc) from exc
                lost = (
                    f"451 4.4.2 {host.name} [{address}]: {error_text(exc)} after the message "
                    "was sent (it may have been delivered)"
                )
                for index, got in zip(pending, exc.replies, strict=True):
                    todo.results[index] = (
                        Result(Disposition.DEFERRED, lost, host.name)
                        if got is None
                        else Result(got.disposition, str(got), host.name)
                    )
                return True
            except TemporaryFailure as exc:
                self._drop(host.name)
                self._check_cancelled(queue_id)  # an administrator's cancel ends it all
                # A limit of this host: deferred, not sent to the next one, which is most
                # often the same provider's, and the limit is there to spare it.
                for index in pending:
                    todo.results[index] = Result(Disposition.DEFERRED, exc.reply, host.name)
                return True
            except (OSError, smtplib.SMTPException) as exc:
                self._drop(host.name)
                self._check_cancelled(queue_id)
                raise self._passing(host, address, exc) from exc
            for index, result in zip(pending, sent, strict=True):
                todo.results[index] = result
            return False
        raise AssertionError("unreachable")

    def _passing(self, host: MailHost, address: str, exc: BaseException) -> BaseException:
        """_Passed for `exc`, with the host's own reply if it gave one; a stall abort ends
        the whole attempt instead."""
        if self._stall_aborted:
            return TemporaryFailure(
                f"451 4.4.1 {host.name}: {self._aborted_error(error_text(exc))}"
            )
        if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code > 0:
            text = (
                exc.smtp_error.decode("utf-8", "replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            return _Passed(f"{exc.smtp_code} {' '.join(text.split())}".strip())
        return _Passed(f"451 4.4.1 {host.name} [{address}]: {error_text(exc)}")

    # --- connections -----------------------------------------------------------------------------
    def _connection(self, host: MailHost, address: str, queue_id: str) -> tuple[smtplib.SMTP, bool]:
        """An open connection to `host` (this thread's, or one another thread left idle),
        reset; or a new one to `address`. Also whether it was reused."""
        while True:
            held = self._held.pop(host.name, None)
            if held is None or not self.destinations.resume(held.slot):
                held = _Held(self._acquire(host.name, queue_id), address, time.monotonic())
            self._held[host.name] = held
            conn = held.slot.conn
            if conn is None:
                break
            self._activate(conn)
            if rset(conn):
                return conn, True
            self._drop(host.name)  # the host dropped it while idle: look again
        conn = self._open(host, address, queue_id)
        held.slot.conn, held.address = conn, address
        self.connections += 1
        return conn, False

    def _open(self, host: MailHost, address: str, queue_id: str) -> smtplib.SMTP:
        settings = self.c.settings
        try:
            return open_client(settings, address, self.c.port, host.name, self._activate)
        except TlsFailed as exc:
            if settings.verify or settings.starttls != "opportunistic":
                raise
            self.events.emit(
                catalog.TLS_FALLBACK,
                queue_id=queue_id, host=host.name, address=address, error=error_text(exc),
            )  # fmt: skip
            plain = replace(settings, starttls="none")
            return open_client(plain, address, self.c.port, host.name, self._activate)

    def _sent(self, name: str) -> None:
        held = self._held[name]
        held.slot.messages += 1
        held.used_at = time.monotonic()
        if self.destinations.exhausted(held.slot):
            self._close(name)
        else:
            self.destinations.pause(held.slot)

    def _drop(self, name: str) -> None:
        """Forget the connection to `name` after a failure: closed, its place freed."""
        held = self._held.pop(name, None)
        if held is None:
            return
        slot = held.slot
        if slot.conn is not None and self.destinations.resume(slot):
            with contextlib.suppress(Exception):
                slot.conn.close()
        self.destinations.release(slot)

    def _close(self, name: str) -> None:
        """End the connection to `name` politely (QUIT), unless another thread took it."""
        held = self._held.pop(name, None)
        if held is None or not self.destinations.resume(held.slot):
            return
        if held.slot.conn is not None:
            quit_and_close(held.slot.conn)
        self.destinations.release(held.slot)

    def _expire(self) -> None:
        now = time.monotonic()
        for name in [n for n, h in self._held.items() if now - h.used_at > self.c.idle_for]:
            self._close(name)

    def _trim(self) -> None:
        while len(self._held) > self.KEEP_OPEN:
            self._close(next(iter(self._held)))  # the least recently used

    # --- events ----------------------------------------------------------------------------------
    def _lookup_failed(
        self, failure: LookupFailure, domain: str, queue_id: str, count: int
    ) -> None:
        event = {
            "null-mx": catalog.NULL_MX,
            "not-found": catalog.MAIL_DOMAIN_NOT_FOUND,
        }.get(failure.kind, catalog.MX_LOOKUP_FAILED)
        self.events.emit(event, queue_id=queue_id, domain=domain, error=failure.reply, count=count)

    def _passed(self, todo: _Domain, host: MailHost, address: str, reply: str, left: bool) -> None:
        self.events.emit(
            catalog.MX_HOST_FAILED,
            queue_id=todo.claims[0].queue_id, host=host.name, address=address,
            domain=todo.name, error=reply,
            next="trying the next" if left else "no other host to try in this attempt",
        )  # fmt: skip

    def flush(self) -> None:
        """Nothing to sync: a mail host's 250 to the message is its promise."""

    def close(self) -> None:
        for name in list(self._held):
            self._close(name)


def _by_domain(claims: Sequence[Claim]) -> Iterator[tuple[str, list[int]]]:
    """Indexes of the claims, grouped by recipient domain (lower case), first seen first."""
    domains: dict[str, list[int]] = {}
    for index, claim in enumerate(claims):
        domains.setdefault(claim.address.rpartition("@")[2].lower(), []).append(index)
    yield from domains.items()


__all__ = ["DnsSettings", "MxConnector", "MxSession"]
