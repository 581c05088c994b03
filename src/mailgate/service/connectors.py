"""Factories of the delivery connectors: one per declared connector that this node runs.

`built_connectors(config)` names the connectors the configuration builds (those some
route uses), `node_connectors(config)` the ones this node runs of them (`[service]
connectors`, default all: the one place that checks that list), and `build` turns one connector
table (config/connectors.py) into its connector: the postoffice, a smarthost, MX delivery
with `[dns]`, or LMTP over TCP or a Unix socket, each with its own per-destination limits.
Nothing is connected here; a password file is read at the first connection, so a missing
one defers mail with the reason rather than stopping the start. Security: the inline
password travels in the connector's settings only (never in a repr or an event).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config.connectors import ConnectorTable
from mailgate.config.schema import Config
from mailgate.connectors.limits import Limits
from mailgate.connectors.lmtp import LmtpConnector, LmtpTarget
from mailgate.connectors.postoffice import PostofficeConnector
from mailgate.connectors.smtp import SmarthostConnector, SmarthostTarget
from mailgate.errors import ConfigError
from mailgate.interchange.connector import Connector
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.postoffice.flush import Flusher
from mailgate.postoffice.tree import Postoffice


@dataclass(frozen=True, slots=True)
class Built:
    """A connector with the thread count, claim batch and linger of its table."""

    connector: Connector
    threads: int
    batch: int
    linger: float = 0.0


def built_connectors(config: Config) -> list[str]:
    """The names of the connectors the configuration builds, in a stable order."""
    return config.connectors


def node_connectors(config: Config) -> list[str]:
    """The connectors this node runs: `[service] connectors` (default: all) among those the
    configuration builds; ConfigError naming the unknown ones and the connectors there are.
    A node without the shared postoffice tree leaves `postoffice` out (docs/nodes.md)."""
    built = built_connectors(config)
    wanted = config.service.connectors
    if wanted is None:
        return built
    unknown = [name for name in wanted if name not in built]
    if unknown:
        there = ", ".join(built) or "none"
        problem = f"{', '.join(unknown)}: no such connector in this configuration ({there})"
        raise ConfigError([("service.connectors", problem)])
    return [name for name in built if name in wanted]


def build_all(
    config: Config,
    office: Postoffice,
    events: EventLog,
    counters: Counters,
    flusher: Flusher | None = None,
) -> list[Built]:
    built = []
    for name in node_connectors(config):
        table = config.connector_tables[name]
        connector = build(table, config, office, events, counters, flusher)
        built.append(Built(connector, table.thread_count, table.batch_size, table.linger_seconds))
    return built


def build(
    table: ConnectorTable,
    config: Config,
    office: Postoffice,
    events: EventLog,
    counters: Counters,
    flusher: Flusher | None = None,
) -> Connector:
    helo = table.helo or config.service.hostname
    limits = Limits(
        connections=table.connections,
        messages_per_connection=table.messages_per_connection,
        rate=table.rate,
        burst=table.burst,
    )
    if table.kind == "postoffice":
        return PostofficeConnector(
            office,
            office.map,
            events,
            # The same on every node that shares the postoffice: a Maildir name is then one
            # per recipient whichever node delivers it, so link() keeps it exactly-once.
            hostname=config.postoffice_domain,
            quota=config.postoffice.quota,
            counters=counters,
            flusher=flusher,
        )
    if table.kind == "mx":
        # dnspython only where an MX connector is built: 100 ms of every process start.
        from mailgate.connectors.mx import MxConnector
        from mailgate.connectors.resolve import DnsSettings

        dns = config.dns
        return MxConnector(
            helo, events, name=table.name,
            dns=DnsSettings(tuple(dns.nameservers), dns.port, dns.timeout, dns.ipv6),
            port=table.port_number, starttls=table.starttls_mode,
            verify=table.verify_certificate, ca_file=table.ca_file, timeout=table.timeout,
            limits=limits, max_addresses=table.max_addresses, chunking=table.chunking,
        )  # fmt: skip
    if table.kind == "lmtp":
        target = LmtpTarget(
            host=table.socket or table.host, lhlo=helo, port=table.port_number,
            starttls=table.starttls_mode, verify=table.verify_certificate,
            ca_file=table.ca_file, timeout=table.timeout, down_for=table.down_for,
            chunking=table.chunking,
        )  # fmt: skip
        return LmtpConnector(target, events, name=table.name, limits=limits)
    smarthost = SmarthostTarget(
        host=table.host, port=table.port_number, helo=helo, starttls=table.starttls_mode,
        verify=table.verify_certificate, ca_file=table.ca_file, username=table.username,
        password_file=table.password_file, password=table.password, timeout=table.timeout,
        down_for=table.down_for, chunking=table.chunking,
    )  # fmt: skip
    return SmarthostConnector(smarthost, events, limits=limits, name=table.name)
