"""Every setting of mailgate, with its type, default and meaning, declared once.

The TOML file mirrors these sections. Unknown keys, wrong types and impossible
values are refused by validation (see load.py), and docs/configuration.md is
generated from the descriptions here (see reference.py).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mailgate.config.connectors import ConnectorTable, DnsSettings, StartTls, check_connectors
from mailgate.config.units import Duration, Size
from mailgate.observe import catalog
from mailgate.postoffice.owner import group_id, user_id
from mailgate.route.patterns import parse_pattern

# Enumerations are Literal types, declared once: validation, the tuples below and the
# allowed values in docs/configuration.md (reference.py) all come from these.
PostofficeMode = Literal["0600", "0640", "0660"]
EventLoop = Literal["uvloop", "asyncio"]
# The relay connector of a configuration without [[connector]] tables; the service asks
# Config.relay_connectors, which knows the tables (kept for tools and tests that build a
# recipient policy by hand).
RELAY_CONNECTORS = ("smarthost",)
# Event categories and diagnostic levels are the event catalog's, named as a file names
# them (`Receive = "maximum"`): declared there, once.
if TYPE_CHECKING:
    Category = str
    Level = str
else:
    Category = Literal[tuple(c.value for c in catalog.Category)]
    Level = Literal[tuple(level.name.lower() for level in catalog.Level)]


def default_hostname() -> str:
    """This machine's host name, lower-cased; no DNS lookup (it may hang offline)."""
    return socket.gethostname().lower() or "localhost"


def parse_hostport(value: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; raise ValueError with a reason."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range 0-65535 (0 picks a free port)")
    return host, int(port)


def _hostport(value: str) -> str:
    parse_hostport(value)
    return value


def _optional_hostport(value: str) -> str:
    if value:
        parse_hostport(value)
    return value


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or "localhost") can only be reached from this machine.

    Names other than localhost count as reachable from elsewhere: no DNS is asked."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _syslog_target(value: str) -> str:
    if not value or value.startswith("/"):
        return value
    kind, _, hostport = value.partition(":")
    if kind not in ("udp", "tcp"):
        raise ValueError(f"{value!r} is not a socket path, udp:HOST:PORT or tcp:HOST:PORT")
    parse_hostport(hostport)
    return value


def _networks(value: list[str]) -> list[str]:
    for net in value:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ValueError(f"{net!r} is not a network in CIDR form ({exc})") from None
    return value


def _pattern(value: str) -> str:
    parse_pattern(value)
    return value


def _domain(value: str) -> str:
    labels = value.split(".")
    if not value or len(value) > 253 or any(not label or len(label) > 63 for label in labels):
        raise ValueError(f"{value!r} is not a domain name")
    return value.lower()


def _user(value: str) -> str:
    if value:
        user_id(value)
    return value


def _group(value: str) -> str:
    if value:
        group_id(value)
    return value


HostPort = Annotated[str, AfterValidator(_hostport)]
Domain = Annotated[str, AfterValidator(_domain)]


# --- nodes (issue 13): a node's name is the first part of every lease owner it writes ---
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _node_name(value: str) -> str:
    if not _NODE_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a node name (1-253 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit)"
        )
    return value


NodeName = Annotated[str, AfterValidator(_node_name)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ServiceSettings(Section):
    hostname: Domain = Field(
        default_factory=default_hostname,
        description="Name this service gives itself in SMTP greetings and Received: headers.",
        json_schema_extra={"doc_default": "this machine's host name"},
    )
    data_dir: str = Field(
        "./var", description="Directory holding the queue, the postoffice, logs and the lock."
    )
    stop_timeout: Duration = Field(
        "30s",
        validate_default=True,
        description="How long a stop waits for in-flight work before exiting anyway.",
    )
    node: NodeName = Field(
        # Validated data so far: hostname is declared above, so it is there.
        default_factory=lambda data: data.get("hostname") or default_hostname(),
        description="Name of this node among those sharing one queue (docs/nodes.md): it "
        "heart-beats under it, and its leases carry it. Two live nodes with one name are "
        "refused; a restarted node rejoins under its name. Nodes that greet with one "
        "`hostname` need a `node` each.",
        json_schema_extra={"doc_default": "service.hostname (this machine's host name)"},
    )
    connectors: list[str] | None = Field(
        None,
        description="The connectors this node runs, by name; none given means every one the "
        "configuration builds. A node without the shared postoffice tree leaves `postoffice` "
        "out: it accepts and queues mail for mailboxes, and the nodes that run it deliver. "
        "An unknown name stops the start, naming the connectors there are.",
        json_schema_extra={"doc_default": "all"},
    )


class ProcessSettings(Section):
    receive: int = Field(
        0,
        ge=0,
        le=64,
        description="SMTP receive worker processes, all accepting on the one listening "
        "socket the master opens (no other instance can bind the port); 0 means one per "
        "CPU core.",
    )


class SmtpSettings(Section):
    listen: HostPort = Field("127.0.0.1:2525", description="Address and port of the SMTP listener.")
    max_message_size: Size = Field(
        "10MiB",
        validate_default=True,
        description="Largest message accepted (advertised with SIZE; 552 5.3.4 beyond).",
    )
    max_recipients: int = Field(
        1000, ge=1, description="Recipients per message; more get 452 4.5.3."
    )
    timeout: Duration = Field(
        "5m", validate_default=True, description="Idle time after which a session is closed."
    )
    commit_timeout: Duration = Field(
        "30s",
        validate_default=True,
        description="Longest wait for the queue to make a message durable before answering 451.",
    )
    reject_8bit_headers: bool = Field(
        True,
        description="Refuse raw 8-bit header bytes from clients that did not ask for SMTPUTF8.",
    )
    relay_networks: Annotated[list[str], AfterValidator(_networks)] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Clients (CIDR) allowed to relay to domains that no local route serves.",
        json_schema_extra={"doc_default": '["127.0.0.0/8", "::1/128"]'},
    )
    tls_cert: str = Field(
        "", description="PEM certificate (chain) for STARTTLS; empty means no TLS offered."
    )
    tls_key: str = Field("", description="PEM private key of tls_cert.")
    require_tls: bool = Field(
        False, description="Refuse MAIL until the client has started TLS (530 5.7.0)."
    )
    implicit_tls_listen: str = Field(
        "",
        description="HOST:PORT of an extra listener speaking TLS from the first byte (port 465 "
        "style); empty means none.",
    )
    auth_users: str = Field(
        "",
        description="Credentials file (`mailgate passwd`) enabling AUTH PLAIN and LOGIN; "
        "authenticated clients may relay.",
    )
    auth_insecure: bool = Field(
        False,
        description="Offer AUTH without TLS. Only for tests on loopback: passwords would cross "
        "the network in clear.",
    )
    auth_failures: int = Field(
        3,
        ge=1,
        description="Failed AUTH attempts per client address within auth_window before further "
        "attempts are refused (454 4.7.0) until the window passes.",
    )
    auth_window: Duration = Field(
        "5m", validate_default=True, description="Window of the AUTH failure limit."
    )
    max_sessions: int = Field(
        100, ge=1, description="Concurrent sessions per receive process; more get 421 4.7.0."
    )
    max_sessions_per_ip: int = Field(
        20,
        ge=1,
        description="Concurrent sessions per client address across every receive process of "
        "the instance; more get 421 4.7.0.",
    )
    relay_networks_exempt: bool = Field(
        True,
        description="Clients in relay_networks have no max_sessions_per_ip (as Postfix exempts "
        "$mynetworks from its client limits); false limits them like any client.",
    )
    event_loop: EventLoop = Field(
        "uvloop",
        description="The SMTP listener's event loop: uvloop (libuv, the loop's own work in C: "
        "less CPU per command) or Python's asyncio loop (to rule uvloop out when "
        "diagnosing).",
    )
    fast_path: bool = Field(
        True,
        description="Answer MAIL, RCPT, DATA, RSET and NOOP as their bytes arrive, without a "
        "turn of aiosmtpd's session task per line (the same replies, a third less CPU per "
        "message); false runs every command through aiosmtpd, to rule the fast path out "
        "when diagnosing a client.",
    )
    reply_linger: Duration = Field(
        "0.2ms",
        validate_default=True,
        description="While the instance has only one session open, its thread stays awake for "
        "up to this long after each reply, watching for the client's next command, instead of "
        "sleeping until it comes: on a virtual machine the wake-up from sleep costs tens of "
        "microseconds per command. Costs CPU only between a lone client's reply and its next "
        "command. 0: never.",
    )
    inline_commit_sessions: int = Field(
        1,
        ge=0,
        description="A receive process with at most this many sessions open commits an "
        "accepted message in the session's own thread when the queue's writer lock is free "
        "at that instant (SQLite; the 250 still follows the flush), instead of handing it to "
        "the group commit and back: nobody would share its flush. 0: always the group "
        "commit.",
    )
    max_errors: int = Field(
        20,
        ge=1,
        description="Error replies in one session before it is closed with 421 4.7.0 "
        "(Postfix's smtpd_hard_error_limit).",
    )
    max_commands: int = Field(
        100_000,
        ge=10,
        description="Commands in one session before it is closed with 421 4.7.0 (a busy "
        "relay sends four per message).",
    )
    max_header_size: Size = Field(
        "100KiB",
        validate_default=True,
        description="Largest header block accepted (552 5.3.4 beyond).",
    )
    max_line_length: Size = Field(
        "1MiB",
        validate_default=True,
        ge=998,
        description="Longest line accepted in a message, in octets without the CRLF (500 5.5.2 "
        "beyond). RFC 5322 asks for 998 at most, but real mail (bounces from large providers "
        "among it) has longer lines; they are kept intact in mailboxes and broken with CRLF "
        "SPACE for SMTP peers, as Postfix does. max_message_size still applies.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if (self.require_tls or self.implicit_tls_listen) and not self.tls_cert:
            raise ValueError("require_tls and implicit_tls_listen need tls_cert and tls_key")
        if self.implicit_tls_listen:
            parse_hostport(self.implicit_tls_listen)
        return self


def _queue_url(value: str) -> str:
    # The URL may hold a password: the reason never repeats the value.
    if value and not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql://USER@HOST:PORT/DATABASE URL, or empty")
    return value


class QueueSettings(Section):
    path: str = Field(
        "",
        description="SQLite queue file; empty means <data_dir>/queue/queue.db. Not used when "
        "`url` names a PostgreSQL queue.",
    )
    url: Annotated[str, AfterValidator(_queue_url)] = Field(
        "",
        description="PostgreSQL queue shared by several nodes, as "
        "`postgresql://USER@HOST:PORT/DATABASE` (libpq URL; parameters such as "
        "`?sslmode=verify-full` allowed); empty means the SQLite file `path`. A password is "
        "better kept in ~/.pgpass or a `passfile=` parameter; one written here is redacted "
        "in every message. Create or upgrade its schema with `mailgate db upgrade` "
        "(docs/nodes.md).",
    )
    pool_size: int = Field(
        4,
        ge=1,
        le=100,
        description="Most PostgreSQL connections each mailgate process opens. A connection "
        "is taken for one transaction or one read and given back at once; each process "
        "needs one for its committer and one or two for reads (docs/nodes.md).",
    )
    node_timeout: Duration = Field(
        "15s",
        validate_default=True,
        description="A node not heard from for this long is declared dead by the live ones, "
        "and its leases are released at once. Each node heart-beats every fifth of it.",
    )
    lease: Duration = Field(
        "5m",
        validate_default=True,
        description="How long a claimed recipient stays leased to one thread before others "
        "retry it.",
    )
    retry_min: Duration = Field(
        "5m", validate_default=True, description="First retry delay after a temporary failure."
    )
    retry_max: Duration = Field(
        "67m", validate_default=True, description="Largest retry delay (backoff doubles up to it)."
    )
    max_lifetime: Duration = Field(
        "5d",
        validate_default=True,
        description="Age after which a message still failing temporarily is bounced.",
    )
    max_internal_failures: int = Field(
        3,
        ge=1,
        description="Internal errors on one recipient, or attempts of it that ended without "
        "an outcome (its thread stalled or died, its lease ran out, its worker was killed), "
        "before it is quarantined.",
    )
    keep_done: Duration = Field(
        "7d",
        validate_default=True,
        description="How long finished messages stay in the store for tracking.",
    )
    commit_batch: int = Field(
        512, ge=1, description="Most operations that share one durable commit (group commit)."
    )
    commit_flush_threads: int = Field(
        2,
        ge=1,
        le=8,
        description="Threads of a receiving process that flush its committed batches (SQLite): "
        "with two, a batch written while the previous one is still being flushed starts its "
        "own flush at once instead of waiting for that one to end, which halves the wait "
        "where a flush is slow and independent flushes run side by side (a network block "
        "device). 1: one flush at a time.",
    )
    check_at_start: bool = Field(
        True,
        description="Verify every page of the queue file at start (SQLite quick_check); a "
        "damaged file stops the start (event 1002) and `mailgate queue check` says what to "
        "do. Skipped when the last stop was clean and the file is exactly as it left it "
        "(same inode, size and times of the file and its WAL). Costs about 0.1 s per 100 MB "
        "of queue from the page cache, 1 s cold; turn it off only where a huge queue must "
        "start at once even after a crash.",
    )

    def sqlite_path(self, data_dir: Path) -> Path:
        """The SQLite queue file, for a data directory."""
        return Path(self.path) if self.path else data_dir / "queue" / "queue.db"

    @model_validator(mode="after")
    def _retry_order(self) -> QueueSettings:
        if self.retry_min > self.retry_max:
            raise ValueError("retry_min must not exceed retry_max")
        return self


class PostofficeSettings(Section):
    root: str = Field(
        "",
        description="Directory of the postoffice tree (networks, postoffices, mailboxes, "
        "outboxes); empty means <data_dir>/postoffice. Nodes sharing one queue may share "
        "one tree on shared storage (docs/nodes.md): delivery into it stays exactly-once.",
    )
    domain: str = Field(
        "",
        description="Mail domain under which postoffice addresses live; empty means "
        "service.hostname.",
    )
    address_template: str = Field(
        "{mailbox}@{po}.{net}.{domain}",
        description="SMTP form of a postoffice address; uses {mailbox}, {po}, {net}, {domain}.",
    )
    max_name_length: int = Field(
        10, ge=1, le=64, description="Longest network, postoffice or mailbox name (MS Mail: 10)."
    )
    quota: Size = Field(
        0,
        description="Bytes a mailbox may hold before deliveries defer; 0 means no quota. The "
        "size is kept in each mailbox's Maildir++ `maildirsize` file (which Dovecot and "
        "Courier read and update too), so a delivery never lists the mailbox.",
    )
    owner: Annotated[str, AfterValidator(_user)] = Field(
        "",
        description="User who owns what mailgate creates in the postoffice (network, "
        "postoffice, outbox and mailbox directories, delivered messages, maildirsize), as "
        "Postfix's virtual_uid_maps: a user name of this system; empty means the user the "
        "service runs as. Set it to the user your Maildir reader serves mail as (Dovecot "
        "refuses mail owned by root); giving files away needs root or CAP_CHOWN.",
    )
    group: Annotated[str, AfterValidator(_group)] = Field(
        "",
        description="Group of what mailgate creates in the postoffice, as Postfix's "
        "virtual_gid_maps: a group name of this system; empty means the service's own.",
    )
    mode: PostofficeMode = Field(
        "0600",
        description="Permissions of the files mailgate creates in the postoffice: "
        '"0600" the owner alone, "0640" the group may read, "0660" the group may read and '
        "write (programs sharing the mailboxes and outboxes through the group). "
        "Directories get the same with search added where read is: 0700, 0750, 0770. "
        "Anyone who may write an outbox may send mail through mailgate.",
    )
    threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Interchange threads delivering to mailboxes. The first takes the mail as "
        "it comes; the others claim only while there is a backlog (a claim found a whole "
        "batch) or the first is stuck in one batch, so that several batches are written and "
        "flushed at once where flushes are slow, and cost nothing at a message at a time. "
        "Raise it where fsync is slow.",
    )
    batch: int = Field(32, ge=1, le=1000, description="Recipients one thread claims at a time.")
    linger: Duration = Field(
        "5ms",
        validate_default=True,
        le=1.0,
        description="After a claim that found fewer recipients than a batch, how long (from "
        "that claim) a thread waits before it claims again, so that mail arriving one message "
        "at a time is delivered several to a claim: one claim, one record and one "
        "mailbox-directory flush for several messages, for at most this much latency. A "
        "claim that found nothing waits for new mail, and the first message after it goes "
        'at once; "0s" claims again at once. At most "1s".',
    )
    flush_threads: int = Field(
        4,
        ge=0,
        le=64,
        description="Threads that fsync a batch's delivered files and mailbox directories side "
        "by side before its outcomes are recorded (a slow-flush disk then costs about one flush "
        "per batch, not one per message); 0: each delivering thread fsyncs them in turn.",
    )

    @model_validator(mode="after")
    def _template(self) -> PostofficeSettings:
        for part in ("{mailbox}", "{po}", "{net}"):
            if self.address_template.count(part) != 1:
                raise ValueError(f"address_template must contain {part} exactly once")
        if self.address_template.count("@") != 1:
            raise ValueError("address_template must contain exactly one '@'")
        return self


class LogSettings(Section):
    dir: str = Field("", description="Directory of the event log; empty means <data_dir>/log.")
    max_bytes: Size = Field(
        "10MiB", validate_default=True, description="Size at which the JSON event log rotates."
    )
    backups: int = Field(5, ge=0, description="Rotated event log files kept.")
    stderr: bool = Field(True, description="Also write events in human form to standard error.")
    store_events: int = Field(
        1_000_000,
        ge=0,
        description="Events kept in the indexed store <log dir>/events.db behind "
        "`mailgate events` and `mailgate track` (about 430 bytes each); 0 disables it.",
    )
    syslog: Annotated[str, AfterValidator(_syslog_target)] = Field(
        "",
        description="Also send every event to syslog (facility mail, RFC 5424 lines): a socket "
        'path such as "/dev/log" (under systemd it reaches the journal), "udp:HOST:PORT" or '
        '"tcp:HOST:PORT"; empty means off.',
    )
    levels: dict[Category, Level] = Field(
        default_factory=dict,
        description='Diagnostic level per event category, e.g. `Receive = "maximum"`; '
        "categories not named use medium, Sent uses maximum.",
        json_schema_extra={"doc_default": "{}"},
    )


class SuperviseSettings(Section):
    max_restarts: int = Field(
        5, ge=1, description="Restarts of one thread within restart_window before it is failed."
    )
    restart_window: Duration = Field(
        "60s", validate_default=True, description="Window over which restarts are counted."
    )
    exit_on_failure: bool = Field(
        False,
        description="Exit non-zero when a thread or connector is failed, so that the service "
        "manager restarts the whole service.",
    )
    stall_after: Duration = Field(
        "120s",
        validate_default=True,
        description="A busy thread, or a connector with due mail, making no progress this long "
        "is stalled (events 5003, 5006).",
    )
    stall_grace: Duration = Field(
        "30s",
        validate_default=True,
        description="How long a stalled thread may take to recover before it is abandoned and "
        "replaced; a worker process whose SMTP loop or committer (threads that cannot be "
        "replaced) stays stalled this long is ended by the master and restarted (event 5030).",
    )
    recycle_after: int = Field(
        10000,
        ge=0,
        description="Interchange threads are replaced by fresh ones after this many "
        "deliveries (0: never), so the restart path is exercised daily.",
    )
    recycle_every: Duration = Field(
        "1h",
        validate_default=True,
        description="... or after running this long (0: never).",
    )
    worker_silence: Duration = Field(
        "15s",
        validate_default=True,
        description="A worker process not heard from this long is wedged: the master ends it "
        "with SIGKILL and starts another.",
    )
    refresh_every: Duration = Field(
        "0s",
        validate_default=True,
        description="Re-read and apply the configuration file this often (0: only on SIGHUP "
        "or `mailgate ctl reload`).",
    )


class AdminSettings(Section):
    listen: Annotated[str, AfterValidator(_optional_hostport)] = Field(
        "127.0.0.1:8025",
        description="Address and port of the admin HTTP listener (/metrics for Prometheus, "
        "/healthz, /status, and the dashboard at /); empty disables it. Also set by "
        "`mailgate run --admin-listen`.",
    )
    token: str = Field(
        "",
        repr=False,
        description="Bearer token every admin request must carry (`Authorization: Bearer "
        "TOKEN`, or the dashboard's session cookie made from it); required when listen is not "
        "a loopback address. Without it the dashboard is read-only. Use a long random value.",
    )

    @model_validator(mode="after")
    def _token_off_loopback(self) -> AdminSettings:
        if self.listen and not self.token and not is_loopback(parse_hostport(self.listen)[0]):
            raise ValueError(
                f"listen {self.listen!r} is not a loopback address: set [admin] token so that "
                "only holders of it can read the service's state"
            )
        return self


class SmarthostSettings(Section):
    host: str = Field(
        "",
        description="Smarthost to relay non-local mail to; empty means no smarthost connector.",
    )
    port: int = Field(25, ge=1, le=65535, description="Smarthost port.")
    starttls: StartTls = Field(
        "opportunistic",
        description="STARTTLS to the smarthost: none never starts it, opportunistic starts it "
        "when the smarthost offers it, required always does (mail is deferred where it cannot).",
    )
    verify: bool = Field(True, description="Verify the smarthost's certificate and name.")
    ca_file: str = Field("", description="CA bundle for verification; empty means the system's.")
    username: str = Field("", description="AUTH user name; empty means no AUTH.")
    password_file: str = Field(
        "", description="File holding the AUTH password (kept out of the configuration)."
    )
    helo: str = Field("", description="Name sent in EHLO; empty means service.hostname.")
    timeout: Duration = Field(
        "60s", validate_default=True, description="Timeout of each smarthost command."
    )
    threads: int = Field(2, ge=1, le=64, description="Interchange threads relaying to it.")
    batch: int = Field(32, ge=1, le=1000, description="Recipients one thread claims at a time.")
    linger: Duration = Field(
        "5ms",
        validate_default=True,
        le=1.0,
        description="How long a thread that claimed a partial batch waits before it claims "
        "again (see [postoffice] linger).",
    )
    down_for: Duration = Field(
        "60s",
        validate_default=True,
        description="After a connection failure, how long new attempts are deferred at once "
        "instead of hammering a dead host.",
    )
    chunking: bool = Field(
        True,
        description="Send the message with BDAT (RFC 3030) when the smarthost offers CHUNKING; "
        "false always sends DATA.",
    )

    def as_connector(self) -> ConnectorTable:
        """This section as the connector named `smarthost`."""
        keys = ("host", "port", "starttls", "verify", "ca_file", "username", "password_file",
                "helo", "timeout", "threads", "batch", "linger", "down_for",
                "chunking")  # fmt: skip
        return ConnectorTable.model_validate(
            {"name": "smarthost", "type": "smtp", **{k: getattr(self, k) for k in keys}}
        )


class PickupSettings(Section):
    enabled: bool = Field(True, description="Take RFC 5322 files from postoffice outboxes.")
    interval: Duration = Field(
        "1s", validate_default=True, description="How often outboxes are scanned."
    )
    settle: Duration = Field(
        "1s",
        validate_default=True,
        description="A file must be unchanged this long before it is taken (still being written).",
    )
    batch: int = Field(200, ge=1, le=10000, description="Files taken per outbox per scan.")


class DsnSettings(Section):
    postmaster: str = Field(
        "",
        description="Where undeliverable bounces go (once); empty means postmaster@<hostname>.",
    )
    max_received: int = Field(
        30, ge=1, description="More Received: headers than this is a mail loop (bounce 5.4.6)."
    )
    delay_warning: Duration = Field(
        "0s",
        validate_default=True,
        description="After this long still undelivered, the sender is told once that the "
        "message is being retried (an RFC 3464 report with Action: delayed); 0 means never.",
    )


class RouteRule(Section):
    match: Annotated[str, AfterValidator(_pattern)] = Field(
        description="Address pattern: 'user@dom', '*@dom', '*@*.dom', 'MS:NET/PO/*' or '*'."
    )
    connector: str = Field(
        description="Name of the connector that delivers matching recipients: `postoffice`, "
        "`smarthost` (when [smarthost] host is set) or a [[connector]] table's name."
    )


CONNECTOR_EXAMPLE = """
[[connector]]                  # a smarthost, with AUTH and TLS required
name = "corp"
type = "smtp"
host = "relay.corp.example"
port = 587
starttls = "required"
username = "mailgate"
password_file = "/etc/mailgate/corp.password"

[[connector]]                  # direct delivery by MX ([dns] says which resolver)
name = "internet"
type = "smtp"
mx = true
connections = 5                # per mail host
rate = 2                       # messages a second per mail host

[[connector]]                  # Dovecot's LMTP on its Unix socket (or host = "127.0.0.1")
name = "dovecot"
type = "lmtp"
socket = "/run/dovecot/lmtp"

[[connector]]                  # the postoffice: only its threads and batch
name = "postoffice"
type = "postoffice"
threads = 2

[[route]]
match = "*@corp.example"
connector = "corp"

[[route]]
match = "*@mail.example"
connector = "dovecot"

[[route]]
match = "MS:*/*/*"
connector = "postoffice"

[[route]]
match = "*"
connector = "internet"
"""


class Config(Section):
    """The whole configuration. Derived paths are properties, never stored twice."""

    service: ServiceSettings = Field(default_factory=ServiceSettings)
    processes: ProcessSettings = Field(default_factory=ProcessSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    postoffice: PostofficeSettings = Field(default_factory=PostofficeSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    supervise: SuperviseSettings = Field(default_factory=SuperviseSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    smarthost: SmarthostSettings = Field(default_factory=SmarthostSettings)
    pickup: PickupSettings = Field(default_factory=PickupSettings)
    dsn: DsnSettings = Field(default_factory=DsnSettings)
    route: list[RouteRule] = Field(
        default_factory=list,
        description="Ordered address-space rules; the first match wins. Without any, "
        "postoffice addresses go to the postoffice and, when [smarthost] host is set, "
        "everything else to the smarthost.",
        json_schema_extra={
            "doc_default": '[{ match = "MS:*/*/*", connector = "postoffice" }, '
            '{ match = "*", connector = "smarthost" }]'
        },
    )

    connector: list[ConnectorTable] = Field(
        default_factory=list,
        description="Named connectors, each a way out that [[route]] rules name: `type = "
        '"smtp"` to a smarthost (`host`) or straight to each domain\'s mail hosts (`mx = '
        'true`), `type = "lmtp"` to an LMTP server (`host` or `socket`), `type = '
        '"postoffice"` (the postoffice Maildirs, always there as `postoffice`; a table of '
        "that name only sets its threads and batch). [smarthost] with a host is the "
        "connector `smarthost`. Each connector has its own threads, batch, per-destination "
        "limits, queue line and stall watch. A key its type does not take is refused. An "
        "example of each type follows; whole configurations are in docs/recipes.md.",
        json_schema_extra={"doc_default": "[]", "doc_example": CONNECTOR_EXAMPLE},
    )
    dns: DnsSettings = Field(default_factory=DnsSettings)

    @model_validator(mode="after")
    def _connectors_and_routes(self) -> Config:
        # Each problem names its key ("route[2].connector: ..."); load.py splits them.
        problems = check_connectors(
            self.connector, [r.connector for r in self.route], bool(self.smarthost.host)
        )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def routes(self) -> list[tuple[str, str]]:
        """The effective rules: the configured ones, or the defaults described above."""
        if self.route:
            return [(r.match, r.connector) for r in self.route]
        rules = [("MS:*/*/*", "postoffice")]
        if self.smarthost.host:
            rules.append(("*", "smarthost"))
        return rules

    @property
    def connectors(self) -> list[str]:
        """The connectors this node builds: those some route uses, in a stable order
        (postoffice, smarthost, then the tables' order). The one place that decides it."""
        used = {connector for _, connector in self.routes}
        return [name for name in self.connector_tables if name in used]

    @property
    def connector_tables(self) -> dict[str, ConnectorTable]:
        """Every declared connector by name: postoffice, the [smarthost] one, the tables."""
        po = self.postoffice
        found = {"postoffice": ConnectorTable(name="postoffice", type="postoffice",
                                              threads=po.threads, batch=po.batch,
                                              linger=po.linger)}  # fmt: skip
        if self.smarthost.host:
            found["smarthost"] = self.smarthost.as_connector()
        for table in self.connector:
            # A postoffice table sets threads, batch, linger; those it leaves are [postoffice]'s.
            merged = found["postoffice"].model_copy(update=table.given())
            found[table.name] = merged if table.type == "postoffice" else table
        return found

    @property
    def relay_connectors(self) -> list[str]:
        """Connectors that carry mail off this host: a recipient routed to one needs a
        client allowed to relay (relay_networks or AUTH)."""
        return [n for n, t in self.connector_tables.items() if t.type == "smtp"]

    @property
    def postmaster(self) -> str:
        return self.dsn.postmaster or f"postmaster@{self.service.hostname}"

    @property
    def badmail_dir(self) -> Path:
        return self.data_dir / "badmail"

    @property
    def data_dir(self) -> Path:
        return Path(self.service.data_dir)

    @property
    def queue_path(self) -> Path:
        return self.queue.sqlite_path(self.data_dir)

    @property
    def log_dir(self) -> Path:
        return Path(self.log.dir) if self.log.dir else self.data_dir / "log"

    @property
    def postoffice_root(self) -> Path:
        return Path(self.postoffice.root) if self.postoffice.root else self.data_dir / "postoffice"

    @property
    def postoffice_domain(self) -> str:
        return self.postoffice.domain.lower() or self.service.hostname
