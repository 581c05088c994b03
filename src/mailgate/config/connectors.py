"""The `[[connector]]` tables and `[dns]`: named ways out, and the checks that tie routes to them.

A table has a `name`, a `type` (smtp, lmtp, postoffice) and that type's settings; a key
another type takes is refused, naming it, so a misplaced `socket` or `mx` never goes
silently unused. Keys a type leaves unset take that type's default (`port` 25 for SMTP,
24 for LMTP; STARTTLS opportunistic for SMTP, none for LMTP; certificates verified for a
smarthost, not for MX hosts, as Postfix's `smtp_tls_security_level = may`).
`check_connectors` ties the tables and the routes together: a duplicate name, a second
postoffice, or a route naming no connector is an error that names its key, at start, at
reload and in `mailgate check-config` alike. Security: `password` is never shown (repr,
docs, events); `password_file` keeps it out of the configuration altogether.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mailgate.config.units import Duration

StartTls = Literal["none", "opportunistic", "required"]
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
SMTP_PORT, LMTP_PORT = 25, 24
LINGER = 0.005  # seconds: the default of every connector's linger

# The keys each kind of connector takes, beyond name, type, threads and batch.
_LIMITS = ("connections", "messages_per_connection", "rate", "burst")
_TLS = ("starttls", "verify", "ca_file")
KEYS: dict[str, tuple[str, ...]] = {
    "smarthost": ("host", "port", *_TLS, "username", "password", "password_file", "helo",
                  "timeout", "down_for", "chunking", *_LIMITS),
    "mx": ("mx", "port", *_TLS, "helo", "timeout", "max_addresses", "chunking", *_LIMITS),
    "lmtp": ("host", "port", "socket", *_TLS, "helo", "timeout", "down_for", "chunking",
             *_LIMITS),
    "postoffice": (),
}  # fmt: skip
_COMMON = ("name", "type", "threads", "batch", "linger")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ConnectorTable(_Section):
    name: str = Field(
        description="The connector's name, as routes, `mailgate ctl pause NAME`, thread names "
        "(`NAME-1`) and metric labels give it: lower-case letters, digits, `-` and `_`, "
        "starting with a letter, at most 32."
    )
    type: Literal["smtp", "lmtp", "postoffice"] = Field(
        description="smtp (a smarthost, or MX with `mx = true`), lmtp or postoffice. Mail "
        "routed to an smtp connector leaves this host: only clients in [smtp] "
        "relay_networks, authenticated ones and the outboxes may send to it (no open "
        "relay); lmtp and postoffice are local delivery, open to any client, as Postfix's "
        "virtual_mailbox_domains."
    )
    host: str = Field("", description="smtp: the smarthost; lmtp: the LMTP server's host.")
    port: int = Field(
        0, ge=0, le=65535, description="Its port; 0 means 25 for smtp (every MX host's), 24 "
        "for lmtp.",
    )  # fmt: skip
    mx: bool = Field(
        False, description="smtp: deliver to each recipient domain's MX hosts (see [dns])."
    )
    socket: str = Field("", description="lmtp: absolute path of the server's Unix socket.")
    starttls: StartTls | None = Field(
        None,
        description="STARTTLS: none never, opportunistic when offered, required always (mail "
        "is deferred where it cannot). Default: opportunistic for smtp, none for lmtp.",
        json_schema_extra={"doc_default": "by type"},
    )
    verify: bool | None = Field(
        None,
        description="Verify the server's certificate and name. Default: true for a smarthost "
        "and lmtp, false for MX hosts (opportunistic TLS, as Postfix's "
        "smtp_tls_security_level = may); true with mx never falls back to plain text.",
        json_schema_extra={"doc_default": "by type"},
    )
    ca_file: str = Field("", description="CA bundle for verification; empty: the system's.")
    username: str = Field("", description="smtp smarthost: AUTH user name; empty: no AUTH.")
    password: str = Field(
        "",
        repr=False,
        description="AUTH password (never logged). Better kept out of the configuration "
        "with password_file.",
    )
    password_file: str = Field("", description="File holding the AUTH password.")
    helo: str = Field("", description="Name sent in EHLO/LHLO; empty means service.hostname.")
    # Defaults as numbers, equal to the value they validate to (given() compares them).
    timeout: Duration = Field(
        60.0, description="Timeout of each command.", json_schema_extra={"doc_default": '"60s"'}
    )
    down_for: Duration = Field(
        60.0,
        json_schema_extra={"doc_default": '"60s"'},
        description="After a connection failure, how long new attempts are deferred at once.",
    )
    chunking: bool = Field(
        True,
        description="Send the message with BDAT (RFC 3030) when the server offers CHUNKING: "
        "no dot-stuffing, and with PIPELINING the whole transaction in one write; false "
        "always sends DATA.",
    )
    max_addresses: int = Field(
        5, ge=1, le=50, description="mx: most host addresses tried for a domain in one attempt."
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Interchange threads of the connector. Default: 2, or [postoffice] "
        "threads for the postoffice.",
        json_schema_extra={"doc_default": "by type"},
    )
    batch: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Recipients one thread claims at a time. Default: 32, or [postoffice] batch.",
        json_schema_extra={"doc_default": "by type"},
    )
    linger: Duration | None = Field(
        None,
        le=1.0,
        description="How long a thread that claimed a partial batch waits before it claims "
        "again (see [postoffice] linger; at most 1s). Default: 5ms, or [postoffice] linger.",
        json_schema_extra={"doc_default": "by type"},
    )
    connections: int = Field(
        0, ge=0, description="Connections open at once per destination (a smarthost, an "
        "LMTP server, an MX host); 0: no limit beyond the threads.",
    )  # fmt: skip
    messages_per_connection: int = Field(
        0, ge=0, description="Messages one connection carries before a new one; 0: no limit."
    )
    rate: float = Field(
        0.0,
        ge=0,
        description="Messages per second per destination (what cannot wait is deferred); "
        "0: no limit.",
    )
    burst: int = Field(1, ge=1, description="Messages sent at once within the rate.")

    def given(self) -> dict[str, Any]:
        """The keys the table sets to something else than their default, with their values
        (name and type included). By value, not by presence: a configuration passed to a
        worker process as JSON has every key present."""
        found = {}
        for key, field in type(self).model_fields.items():
            value = getattr(self, key)
            if field.is_required() or value != field.get_default():
                found[key] = value
        return found

    @property
    def kind(self) -> str:
        """smarthost, mx, lmtp or postoffice: what decides the keys it takes."""
        if self.type == "smtp":
            return "mx" if self.mx else "smarthost"
        return self.type

    @property
    def thread_count(self) -> int:
        return self.threads if self.threads is not None else 2

    @property
    def batch_size(self) -> int:
        return self.batch if self.batch is not None else 32

    @property
    def linger_seconds(self) -> float:
        return self.linger if self.linger is not None else LINGER

    @property
    def port_number(self) -> int:
        return self.port or (LMTP_PORT if self.type == "lmtp" else SMTP_PORT)

    @property
    def starttls_mode(self) -> str:
        if self.starttls is not None:
            return self.starttls
        return "none" if self.type == "lmtp" else "opportunistic"

    @property
    def verify_certificate(self) -> bool:
        return self.verify if self.verify is not None else self.kind != "mx"

    @model_validator(mode="after")
    def _keys_of_its_type(self) -> ConnectorTable:
        if not NAME.match(self.name):
            raise ValueError(
                f"name: {self.name!r} is not a name (lower-case letters, digits, '-' and "
                "'_', starting with a letter, at most 32)"
            )
        allowed = set(_COMMON) | set(KEYS[self.kind])
        wrong = sorted(set(self.given()) - allowed)
        if wrong:
            what = {"mx": "an MX", "lmtp": "an lmtp"}.get(self.kind, f"a {self.kind}")
            raise ValueError(
                "\n".join(f"{key}: not a setting of {what} connector" for key in wrong)
            )
        if self.kind == "smarthost" and not self.host:
            raise ValueError("an smtp connector needs host (a smarthost) or mx = true")
        if self.kind == "lmtp" and bool(self.host) == bool(self.socket):
            raise ValueError("an lmtp connector needs host or socket, not both")
        if self.socket and not self.socket.startswith("/"):
            raise ValueError(f"socket {self.socket!r} is not an absolute path")
        if self.password and self.password_file:
            raise ValueError("password and password_file: one or the other")
        if (self.password or self.password_file) and not self.username:
            raise ValueError("a password needs username")
        return self


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


class DnsSettings(_Section):
    nameservers: list[str] = Field(
        default_factory=list,
        description="Resolvers (IP addresses) the MX connectors ask; empty means those of "
        "/etc/resolv.conf. A resolver of one's own (unbound on loopback) is what a site "
        "sending to the internet wants: validating, caching, not shared.",
        json_schema_extra={"doc_default": "[]"},
    )
    port: int = Field(53, ge=1, le=65535, description="Port of the nameservers.")
    timeout: Duration = Field(
        "10s",
        validate_default=True,
        description="Longest one lookup may take, every server and retry included; a lookup "
        "that times out defers its recipients (event 2483).",
    )
    ipv6: bool = Field(True, description="Also connect to MX hosts' IPv6 (AAAA) addresses.")

    @model_validator(mode="after")
    def _addresses(self) -> DnsSettings:
        for server in self.nameservers:
            _address(server)
        return self


def check_connectors(
    tables: Sequence[ConnectorTable], routes: Sequence[str], smarthost: bool
) -> list[str]:
    """Every problem of the connector tables and of the routes naming them, each as
    "KEY: reason"; `smarthost` is whether [smarthost] host declares `smarthost`."""
    problems: list[str] = []
    seen: dict[str, str] = {"postoffice": "the postoffice"}
    if smarthost:
        seen["smarthost"] = "[smarthost]"
    for n, table in enumerate(tables):
        key = f"connector[{n}].name"
        if table.type == "postoffice" or table.name == "postoffice":
            if table.type != "postoffice" or table.name != "postoffice":
                problems.append(f"{key}: there is one postoffice, the connector 'postoffice'")
            elif "postoffice" in seen and seen["postoffice"] != "the postoffice":
                problems.append(f"{key}: 'postoffice' is already {seen['postoffice']}")
            seen["postoffice"] = key.removesuffix(".name")
            continue
        if table.name in seen:
            problems.append(f"{key}: {table.name!r} is already the name of {seen[table.name]}")
        seen[table.name] = key.removesuffix(".name")
    for n, name in enumerate(routes):
        if name in seen:
            continue
        known = ", ".join(repr(k) for k in seen)
        why = f"no connector {name!r} (known: {known})"
        if name == "smarthost":
            why += ": [smarthost] host is empty"
        elif not smarthost:
            why += "; [smarthost] host declares 'smarthost', [[connector]] tables the others"
        problems.append(f"route[{n}].connector: {why}")
    return problems
