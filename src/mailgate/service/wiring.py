"""Factories: each builds one stage's object from the configuration, and nothing more.

No policy lives here (what runs where, in which order, and what happens when it
fails is the Host's and the parts'), and nothing is built at import time. Tools that
work on the data directory without the service (`mailgate mailbox`, `mailgate queue`)
use the same factories, so they see the postoffice, the routes and the event log as
the service does. A bad certificate or credentials file raises here, at start.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from mailgate.config.schema import Config, SmtpSettings
from mailgate.dsn.generate import BounceGenerator
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog, levels_from_config, open_event_log
from mailgate.postoffice.address import AddressMap
from mailgate.postoffice.flush import Flusher
from mailgate.postoffice.known import KnownMailboxes
from mailgate.postoffice.owner import Ownership
from mailgate.postoffice.tree import Postoffice
from mailgate.queue.backend import Backend
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.store import QueueStore, Writer
from mailgate.receive.board import SessionBoard
from mailgate.receive.pickup import Pickup
from mailgate.receive.smtp import ReceiveHandler
from mailgate.receive.tls import server_context
from mailgate.route.policy import RecipientPolicy, postoffice_verifier
from mailgate.route.router import Router
from mailgate.security.passwords import Credentials, CredentialsError
from mailgate.service.connectors import Built, build_all, built_connectors, node_connectors
from mailgate.supervise.supervisor import Supervisor


def open_events(config: Config, *, stderr: bool | None = None) -> EventLog:
    log = config.log
    return open_event_log(
        config.log_dir,
        levels=levels_from_config(log.levels),
        max_bytes=log.max_bytes,
        backups=log.backups,
        stderr=log.stderr if stderr is None else stderr,
        syslog=log.syslog,
    )


def address_map(config: Config) -> AddressMap:
    po = config.postoffice
    return AddressMap(config.postoffice_domain, po.address_template, po.max_name_length)


def postoffice(config: Config, addresses: AddressMap | None = None) -> Postoffice:
    po = config.postoffice
    ownership = Ownership.of(po.owner, po.group, po.mode)  # of what mailgate creates there
    return Postoffice(config.postoffice_root, addresses or address_map(config), ownership)


def router(config: Config, addresses: AddressMap) -> Router:
    return Router(config.routes, addresses)


def unbuilt_routes(running: Config, new: Config) -> list[tuple[str, str]]:
    """Routes of `new` to connectors `running` did not build, as (key, why). Connectors are
    built at start: mail routed to a new one would wait for a restart, so such a reload is
    refused. (A connector's changed settings also wait for one: event 1101 says so.)"""
    built = built_connectors(running)
    problems = []
    for n, (_, name) in enumerate(new.routes):
        if name not in built:
            key = f"route[{n}].connector" if new.route else "smarthost.host"
            problems.append((key, f"connector {name!r} is not running; restart to start it"))
    return problems


def recipient_policy(config: Config, office: Postoffice, routes: Router) -> RecipientPolicy:
    # A node that does not run the postoffice cannot see its mailboxes: the nodes that do
    # deliver, or bounce for a mailbox that does not exist.
    verify = "postoffice" in node_connectors(config)
    return RecipientPolicy(
        routes,
        {"postoffice": postoffice_verifier(KnownMailboxes(office.exists))} if verify else {},
        relay_connectors=config.relay_connectors,
        relay_networks=config.smtp.relay_networks,
    )


def bounces(config: Config, policy: RecipientPolicy) -> BounceGenerator:
    """The service's bounce generator: reports routed by the running policy."""
    return BounceGenerator(
        config.service.hostname, config.postmaster, lambda a: policy.route(a).connector
    )


def bounce_generator(config: Config) -> BounceGenerator:
    """The bounce generator of `config`'s routes, for tools that finish messages outside the
    service (`mailgate queue delete --ndr`, `mailgate queue bounce`)."""
    routes = router(config, address_map(config))
    return BounceGenerator(
        config.service.hostname, config.postmaster, lambda a: routes.route(a).connector
    )


def queue_store(config: Config, writer: Writer, backend: Backend) -> QueueStore:
    """The queue facade with the retry policy and lease of `config`."""
    q = config.queue
    return QueueStore(
        backend,
        writer,
        policy=RetryPolicy(q.retry_min, q.retry_max, q.max_lifetime),
        lease=q.lease,
        max_internal_failures=q.max_internal_failures,
    )


def make_supervisor(
    config: Config, events: EventLog, on_fatal: Callable[[str], None]
) -> Supervisor:
    """A supervisor with `config`'s restart budget and stall limits."""
    sv = config.supervise
    return Supervisor(
        events,
        max_restarts=sv.max_restarts,
        window=sv.restart_window,
        on_fatal=on_fatal,
        stall_after=sv.stall_after,
        grace=sv.stall_grace,
    )


def smtp_secrets(smtp: SmtpSettings) -> tuple[ssl.SSLContext | None, Credentials | None]:
    """The TLS context and AUTH credentials of [smtp], read now: a bad certificate or
    credentials file is an error at start."""
    tls = server_context(smtp.tls_cert, smtp.tls_key) if smtp.tls_cert else None
    return tls, credentials(smtp.auth_users)


def credentials(path: str) -> Credentials | None:
    if not path:
        return None
    found = Credentials(Path(path))
    if not found.path.is_file():
        raise CredentialsError(f"[smtp] auth_users: no credentials file {path}")
    found.users()  # a malformed file is an error now, not at the first AUTH
    return found


def receive_handler(
    config: Config,
    store: QueueStore,
    policy: RecipientPolicy,
    events: EventLog,
    counters: Counters,
    board: SessionBoard | None = None,
) -> ReceiveHandler:
    tls, users = smtp_secrets(config.smtp)
    return ReceiveHandler(
        config.smtp,
        store,
        policy,
        events,
        counters,
        hostname=config.service.hostname,
        tls=tls,
        credentials=users,
        board=board,
    )


def delivery_connectors(
    config: Config,
    office: Postoffice,
    events: EventLog,
    counters: Counters,
    flusher: Flusher | None = None,
) -> list[Built]:
    """Each connector this node runs (service/connectors.py), with its thread count,
    claim batch and linger."""
    return build_all(config, office, events, counters, flusher)


def pickup(
    config: Config,
    store: QueueStore,
    policy: RecipientPolicy,
    addresses: AddressMap,
    events: EventLog,
    counters: Counters,
) -> Pickup:
    return Pickup(
        config.postoffice_root,
        config.badmail_dir,
        config.pickup,
        store,
        policy,
        addresses,
        events,
        counters,
        max_size=config.smtp.max_message_size,
        hostname=config.service.hostname,
    )
