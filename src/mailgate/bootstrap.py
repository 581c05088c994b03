"""The one wiring point: builds every stage from a Config and connects them.

Nothing wires itself at import time. `Service` owns the pieces, starts the
supervised threads in dependency order and stops them in reverse (receivers
before the committer they hand messages to), within the stop deadline.
`run_service` is `mailgate run`: lock, start, wait for a signal, stop, and
return the exit code (0 only for a clean stop). Every way out writes an event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from mailgate import __version__
from mailgate.config.schema import RELAY_CONNECTORS, Config, SmtpSettings
from mailgate.connectors.postoffice import PostofficeConnector
from mailgate.connectors.smtp import SmarthostConnector, SmarthostTarget
from mailgate.control.commands import ControlCommands
from mailgate.control.server import ControlServer, bind_control, socket_path
from mailgate.dsn.generate import BounceGenerator
from mailgate.errors import AlreadyRunning, ConfigError, PortInUse, StoreError, StoreInUse
from mailgate.interchange.connector import Connector
from mailgate.interchange.ended import report_ended
from mailgate.interchange.inflight import InFlight
from mailgate.interchange.scheduler import Scheduler
from mailgate.interchange.state import Connectors
from mailgate.interchange.wakeup import (
    RemoteWakeup,
    Wakeup,
    WakeupListener,
    bind_wakeup,
    wakeup_path,
)
from mailgate.interchange.worker import InterchangeThread, lease_owner
from mailgate.observe import catalog
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog, levels_from_config, open_event_log
from mailgate.observe.eventwriter import EventStoreWriter, attach_event_store
from mailgate.postoffice.address import AddressMap
from mailgate.postoffice.tree import Postoffice
from mailgate.queue.backend import Backend
from mailgate.queue.commit import Committer
from mailgate.queue.leases import LeasesEnded
from mailgate.queue.lock import DataDirLock
from mailgate.queue.retry import RetryPolicy
from mailgate.queue.sqlite import SqliteBackend
from mailgate.queue.store import QueueReader, QueueStore, Writer
from mailgate.receive.listeners import Listeners, open_listeners
from mailgate.receive.pickup import Pickup
from mailgate.receive.server import SmtpListener
from mailgate.receive.smtp import ReceiveHandler
from mailgate.receive.tls import server_context
from mailgate.route.policy import RecipientPolicy, postoffice_verifier
from mailgate.route.router import Router
from mailgate.security.passwords import Credentials, CredentialsError
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Supervisor
from mailgate.supervise.systemd import Notifier
from mailgate.web.admin import AdminServer, open_admin
from mailgate.web.view import ServiceView

STORE_WAIT = 60.0
MONITOR_SILENT = 5.0  # the monitor ticks every 0.2 s; silence this long means it is wedged


def address_map(config: Config) -> AddressMap:
    po = config.postoffice
    return AddressMap(config.postoffice_domain, po.address_template, po.max_name_length)


def postoffice(config: Config) -> Postoffice:
    return Postoffice(config.postoffice_root, address_map(config))


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


def bounce_generator(config: Config) -> BounceGenerator:
    """The bounce generator of `config`'s routes, for tools that finish messages outside the
    service (`mailgate queue delete --ndr`, `mailgate queue bounce`)."""
    router = Router(config.routes, address_map(config))
    return BounceGenerator(
        config.service.hostname, config.postmaster, lambda a: router.route(a).connector
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


class Service:
    """Every stage of one mailgate process, wired; `start` then `stop`."""

    def __init__(
        self,
        config: Config,
        events: EventLog,
        source: Callable[[], Config] | None = None,
        *,
        role: str = "all",
        listeners: Listeners | None = None,
    ) -> None:
        """`role` is "all" (one process does everything: --single-process), or the part a
        worker process plays under a master: "receive" (SMTP) or "interchange" (delivery,
        scheduling, pickup). Only "all" takes the lock and serves the control socket.
        `listeners` are the sockets a receive worker inherited from its master; without
        them the service opens its own."""
        self.role = role
        self.listeners = listeners
        self.config = config
        self.events = events
        self.source = source  # re-reads the configuration for a reload
        self.lock = DataDirLock(config.data_dir, config.queue_path)  # and the store's
        # Only processes that accept mail need each commit on disk before they answer; the
        # interchange process's claims and outcomes may be lost to a power failure and redone
        # (postoffice delivery is idempotent), which spares its fsyncs and shortens its hold
        # on SQLite's single write lock.
        # The group committers wait for the writer lock as long as it takes (lock_timeout
        # None): the supervisor reports a commit thread stuck there, with its stack.
        self.backend = SqliteBackend(
            config.queue_path, durable=role != "interchange", lock_timeout=None
        )
        self.committer = Committer(self.backend, events, max_batch=config.queue.commit_batch)
        self.store = queue_store(config, self.committer, self.backend)
        # Pickup removes a file once its message is committed: that commit must be on disk.
        # Where the main committer is not durable, pickup gets a durable one of its own.
        self.pickup_committer: Committer | None = None
        self.pickup_store = self.store
        if not self.backend.durable:
            durable = SqliteBackend(config.queue_path, lock_timeout=None)
            self.pickup_committer = Committer(durable, events, max_batch=config.queue.commit_batch)
            self.pickup_store = queue_store(config, self.pickup_committer, durable)
        self.wakeup: Wakeup = (
            RemoteWakeup(wakeup_path(config.data_dir)) if role == "receive" else Wakeup()
        )
        self.stopped = threading.Event()
        self.failure: str | None = None
        self.reloads = ReloadState()
        self.supervisor = make_supervisor(config, events, self.fail)
        self.connectors = Connectors(config.connectors)
        self.counters = Counters()
        self.address_map = address_map(config)
        self.postoffice = Postoffice(config.postoffice_root, self.address_map)
        self.router = Router(config.routes, self.address_map)
        self.policy = RecipientPolicy(
            self.router,
            {"postoffice": postoffice_verifier(self.postoffice.exists)},
            relay_connectors=RELAY_CONNECTORS,
            relay_networks=config.smtp.relay_networks,
        )
        bounces = BounceGenerator(
            config.service.hostname, config.postmaster, lambda a: self.policy.route(a).connector
        )
        for store in {
            id(self.store): self.store,
            id(self.pickup_store): self.pickup_store,
        }.values():
            store.on_done = bounces
            store.delay_warner = bounces.warn_delayed
        self.event_store: EventStoreWriter | None = None
        self.listener: SmtpListener | None = None
        self.control_socket: socket.socket | None = None
        self.admin: AdminServer | None = None
        self.wakeup_socket: socket.socket | None = None
        self.scheduler: Scheduler | None = None
        self.interchange_threads: list[str] = []
        self.delivery_connectors: dict[str, Connector] = {}
        self.in_flight = InFlight()  # what each interchange thread delivers right now

    # --- start -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the lock, open the store, bind the port, start every thread.

        Raises AlreadyRunning, StoreError or OSError before any thread starts.
        """
        if self.role == "all":
            self.lock.acquire()
        try:
            self._prepare()
        except BaseException:
            self.lock.release()
            raise
        self._start_threads()

    @property
    def receives(self) -> bool:
        return self.role in ("all", "receive")

    @property
    def delivers(self) -> bool:
        return self.role in ("all", "interchange")

    def _prepare(self) -> None:
        config = self.config
        self.postoffice.root.mkdir(parents=True, exist_ok=True)
        # Under a master, the master checked the store before starting any worker.
        self.backend.initialize(check=self.role == "all" and config.queue.check_at_start)
        if self.role == "all":
            release_leases_at_start(self.backend, self.events, config, self.lock)
            self.control_socket = bind_control(socket_path(config.data_dir))
            self.admin = open_admin(config.admin, lambda: ServiceView(self))  # bound now
        if self.role == "interchange":
            self.wakeup_socket = bind_wakeup(wakeup_path(config.data_dir))
        if not self.receives:
            return
        tls, credentials = smtp_secrets(config.smtp)
        handler = ReceiveHandler(
            config.smtp,
            self.store,
            self.policy,
            self.wakeup,
            self.events,
            self.counters,
            hostname=config.service.hostname,
            tls=tls,
            credentials=credentials,
        )
        listeners = self.listeners or open_listeners(config.smtp)  # PortInUse names the holder
        self.listener = SmtpListener(
            handler,
            listeners.smtp,
            tls_sock=listeners.implicit_tls,
            tls_context=handler.tls,
        )

    def _start_threads(self) -> None:
        sup = self.supervisor
        sup.start()
        if self.role == "all" and self.config.log.store_events:
            self.event_store = start_event_store(sup, self.events, self.config)
        if self.control_socket is not None:
            sup.spawn(
                "control",
                "control",
                ControlServer(self.control_socket, ControlCommands(self).table()),
                critical=True,
            )
        self._start_admin()
        for name, committer in (
            ("commit", self.committer),
            ("commit-durable", self.pickup_committer),
        ):
            if committer is not None:
                sup.spawn(
                    name,
                    "commit",
                    _committer_body(committer),
                    critical=True,
                    on_stop=committer.wake,
                    abandon=False,  # a second committer would wait on the same lock or disk
                )
        if self.delivers:
            self._start_delivery()
        if self.listener is not None:
            listener = self.listener
            # Not abandoned when stalled: a second loop on the same listening socket would
            # have it closed under it when the wedged one wakes. The stall keeps the service
            # unhealthy (503, no watchdog ping), so its manager restarts it.
            sup.spawn(
                "smtp",
                "receive",
                listener,
                critical=True,
                on_stop=listener.request_stop,
                abandon=False,
            )

    def _start_admin(self) -> None:
        """The admin HTTP listener (/metrics, /healthz, /status), bound in _prepare."""
        if self.admin is not None:
            self.supervisor.spawn("admin", "admin", self.admin)

    def _start_delivery(self) -> None:
        config, sup = self.config, self.supervisor
        if self.wakeup_socket is not None:
            listener = WakeupListener(self.wakeup_socket, self.wakeup)
            sup.spawn("wakeup", "wakeup", listener, stall_detection=False)
        self.scheduler = Scheduler(
            self.store,
            self.wakeup,
            self.events,
            self.connectors,
            keep_done=config.queue.keep_done,
            stall_after=config.supervise.stall_after,
            threads_summary=self.threads_summary,
            delay_warning=config.dsn.delay_warning,
            counters=self.counters,
            route=lambda address: self.policy.route(address).connector,
            known_connectors=lambda: self.config.connectors,
        )
        sup.spawn("scheduler", "scheduler", self.scheduler)
        sv = config.supervise
        for connector, threads, batch in self._connectors():
            self.delivery_connectors[connector.name] = connector
            body = InterchangeThread(
                connector,
                self.store,
                self.wakeup,
                self.events,
                hostname=config.service.hostname,
                batch=batch,
                max_received=config.dsn.max_received,
                state=self.connectors[connector.name],
                recycle_after=sv.recycle_after,
                recycle_every=sv.recycle_every,
                counters=self.counters,
                in_flight=self.in_flight,
            )
            for n in range(1, threads + 1):
                name = f"{connector.name}-{n}"
                sup.spawn(
                    name,
                    "interchange",
                    body,
                    connector=connector.name,
                    critical=sv.exit_on_failure,
                    on_stop=self.wakeup.notify_all,
                    on_stall=self._release_stalled,
                )
                self.interchange_threads.append(name)
        if config.pickup.enabled:
            sup.spawn("pickup", "pickup", self._pickup())

    def _release_stalled(self, handle: ThreadHandle) -> None:
        """A stalled interchange thread's leases go back to the queue for others to retry;
        its attempts ended without an outcome and count (a delivery that hangs every time
        is quarantined, not retried forever)."""
        owner = lease_owner(self.config.service.hostname, handle.name, handle.generation)
        ending = self.store.end_leases("its thread stalled", owner)
        why = f"held by stalled {handle.name}"

        def reported(done: Future[LeasesEnded]) -> None:
            if done.exception() is None:
                report_ended(self.events, done.result(), why)

        ending.add_done_callback(reported)  # not waited for: the monitor must never block

    def clear_down(self, names: list[str], by: str) -> list[str]:
        """An administrator wants delivery now: the named connectors forget that their
        destination was down (a smarthost marked down after a failure). The names cleared."""
        cleared = []
        for name in names:
            clear = getattr(self.delivery_connectors.get(name), "clear_down", None)
            if clear is not None and clear(by):
                cleared.append(name)
        return cleared

    def threads_summary(self, connector: str | None = None) -> str:
        views = self.supervisor.statistics().threads
        return ", ".join(
            f"{v.name}={v.state}" for v in views if connector is None or v.connector == connector
        )

    def status_line(self, reader: QueueReader | None = None) -> str:
        """One line for systemd's STATUS: health, queue lengths, thread count."""
        reasons = self.health()
        waiting: dict[str, int] = {}
        if reader is not None:
            with contextlib.suppress(StoreError):
                for (connector, _), count in reader.counts().by_state.items():
                    waiting[connector] = waiting.get(connector, 0) + count
        queues = ", ".join(
            f"{c.name} {waiting.get(c.name, 0)} queued/{c.delivered} delivered"
            for c in self.connectors.by_name.values()
        )
        threads = len(self.supervisor.statistics().threads)
        health = "healthy" if not reasons else "UNHEALTHY: " + "; ".join(reasons)
        return f"{health}; {threads} threads; {queues}"

    def health(self) -> list[str]:
        """Why the service is unhealthy; an empty list means healthy."""
        stats = self.supervisor.statistics()
        reasons = [f"thread {name} failed" for name in stats.failed]
        reasons += [f"thread {name} stalled" for name in stats.stalled]
        reasons += [f"connector {name} stalled" for name in self._stalled_connectors()]
        monitor = self.supervisor.handle("supervisor")
        if monitor is not None and time.time() - monitor.last_progress > MONITOR_SILENT:
            reasons.append("the supervisor's monitor is not turning")
        if self.failure:
            reasons.append(self.failure)
        return reasons

    def _stalled_connectors(self) -> list[str]:
        handle = self.supervisor.handle("scheduler")
        scheduler = self.scheduler
        return scheduler.watch.stalled() if handle is not None and scheduler else []

    def reload(self, new: Config | None = None) -> bool:
        """Re-read the configuration (or take `new`, already validated by the master) and
        apply what can change live. False if it was refused; the running one stays."""
        ok = self._reload(new)
        self.reloads.record(ok)
        return ok

    def _reload(self, new: Config | None) -> bool:
        if new is None:
            if self.source is None:
                return False
            read = read_new_config(self.source, self.events)
            if isinstance(read, str):
                return False
            new = read
        try:  # built before anything is swapped: a failure leaves all as it was
            router = Router(new.routes, self.address_map)
            levels = levels_from_config(new.log.levels)
        except Exception as exc:
            self.events.emit(
                catalog.CONFIG_INVALID, source="reload", problems=f"cannot apply it: {exc!r}"
            )
            return False
        self.policy.replace(router, new.smtp.relay_networks)
        for category, level in levels.items():
            self.events.set_level(category, level)
        restart = needs_restart(self.config, new)
        self.config = self.config.model_copy(update={"route": new.route, "log": new.log})
        if self.role == "all":  # under a master, the master reports the reload once
            self.events.emit(
                catalog.CONFIG_RELOADED,
                routes=len(new.routes),
                restart_needed=", ".join(restart) or "nothing",
            )
        return True

    def _connectors(self) -> list[tuple[Connector, int, int]]:
        """Each connector some route uses, with its thread count and claim batch."""
        config = self.config
        built: list[tuple[Connector, int, int]] = []
        if "postoffice" in config.connectors:
            po = config.postoffice
            postoffice = PostofficeConnector(
                self.postoffice,
                self.address_map,
                self.events,
                hostname=config.service.hostname,
                quota=po.quota,
                counters=self.counters,
            )
            built.append((postoffice, po.threads, po.batch))
        if "smarthost" in config.connectors:
            sh = config.smarthost
            target = SmarthostTarget(
                host=sh.host,
                port=sh.port,
                helo=sh.helo or config.service.hostname,
                starttls=sh.starttls,
                verify=sh.verify,
                ca_file=sh.ca_file,
                username=sh.username,
                password_file=sh.password_file,
                timeout=sh.timeout,
                down_for=sh.down_for,
            )
            built.append((SmarthostConnector(target, self.events), sh.threads, sh.batch))
        return built

    def _pickup(self) -> Pickup:
        config = self.config
        return Pickup(
            config.postoffice_root,
            config.badmail_dir,
            config.pickup,
            self.pickup_store,
            self.policy,
            self.address_map,
            self.wakeup,
            self.events,
            self.counters,
            max_size=config.smtp.max_message_size,
            hostname=config.service.hostname,
        )

    # --- stop ------------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """Ask for a stop that ends with a non-zero exit status."""
        self.failure = self.failure or reason
        self.stopped.set()

    def request_stop(self) -> None:
        self.stopped.set()

    def stop(self) -> list[str]:
        """Stop every thread within [service] stop_timeout; names of threads left running."""
        deadline = time.monotonic() + self.config.service.stop_timeout
        groups = [
            ["smtp", "pickup"],
            self.interchange_threads,
            ["scheduler"],
            ["commit", "commit-durable"],
        ]
        left = self.supervisor.stop_all(groups, deadline)
        if left:
            self.events.emit(
                catalog.STOP_INCOMPLETE,
                timeout=self.config.service.stop_timeout,
                threads=", ".join(left),
            )
        if self.control_socket is not None:
            self.control_socket.close()
            socket_path(self.config.data_dir).unlink(missing_ok=True)
        if self.wakeup_socket is not None:
            self.wakeup_socket.close()
        if self.admin is not None:
            self.admin.close()
        if self.listener is not None:
            self.listener.close()  # already closed unless the smtp thread did not stop
        self.lock.release()
        return left


@dataclass(slots=True)
class ReloadState:
    """Whether the last reload was taken, and when one last was (or the start): what
    `ctl status` and /metrics show, since a refused reload leaves the service healthy."""

    ok: bool = True
    succeeded_at: float = field(default_factory=time.time)

    def record(self, ok: bool) -> None:
        self.ok = ok
        if ok:
            self.succeeded_at = time.time()

    def json(self) -> dict[str, Any]:
        return {"last_reload_ok": self.ok, "last_reload_success": self.succeeded_at}


def read_new_config(source: Callable[[], Config], events: EventLog) -> Config | str:
    """Re-read the configuration for a reload: the new one, or (after event 1100) what is
    wrong with it.

    Nothing a file holds may end the service: load_config turns every problem into a
    ConfigError, and anything else it raised is a bug reported the same way (Q201120)."""
    try:
        return source()
    except ConfigError as exc:
        problems = "; ".join(f"{k}: {r}" for k, r in exc.problems)
    except Exception as exc:
        problems = f"cannot be read: {exc!r}"
    events.emit(catalog.CONFIG_INVALID, source="reload", problems=problems)
    return problems


def _committer_body(committer: Committer) -> Callable[[ThreadHandle], None]:
    return lambda h: committer.run(lambda: h.stopping, h.progress, h.busy, h.idle)


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
    return tls, _credentials(smtp.auth_users)


def _credentials(path: str) -> Credentials | None:
    if not path:
        return None
    credentials = Credentials(Path(path))
    if not credentials.path.is_file():
        raise CredentialsError(f"[smtp] auth_users: no credentials file {path}")
    credentials.users()  # a malformed file is an error now, not at the first AUTH
    return credentials


def start_event_store(sup: Supervisor, events: EventLog, config: Config) -> EventStoreWriter:
    """The indexed event store behind `mailgate events` (one per service: the lock holder)."""
    writer = attach_event_store(events, config.log_dir, config.log.store_events)
    sup.spawn("events", "events", writer, on_stop=writer.wake)
    return writer


def needs_restart(old: Config, new: Config) -> list[str]:
    """Sections that changed but only take effect after a restart."""
    live = {"route", "log"}
    return [
        name
        for name in type(old).model_fields
        if name not in live and getattr(old, name) != getattr(new, name)
    ]


def release_leases_at_start(
    backend: Backend, events: EventLog, config: Config, lock: DataDirLock
) -> int:
    """Give back the leases left in the store when this service starts (it holds the lock,
    so their holders are gone). After a clean stop they were given back deliberately (a
    stop that outlived its deadline left a wedged thread's, which stall detection had its
    chance to count): no attempt is counted. After the service died (its PID was still in
    the lock file) each lease is an attempt that ended without an outcome, and counts: a
    message that crashes the whole service on every attempt is quarantined, not retried
    forever (Exchange's poison message queue counts crashes the same way)."""
    if lock.previous_pid is None:
        return release_all_leases(backend, events)
    return end_dead_leases(
        backend,
        events,
        config,
        None,
        f"held when the service (pid {lock.previous_pid}) ended without stopping",
        "the service ended without stopping",
    )


def end_dead_leases(
    backend: Backend,
    events: EventLog,
    config: Config,
    owner_prefix: str | None,
    why: str,
    reason: str,
) -> int:
    """End the leases of processes that died (one worker's, by owner prefix, or all):
    each is an attempt without an outcome, counted; see queue/leases.py."""
    from mailgate.queue.commit import DirectWriter

    writer = DirectWriter(backend)
    try:
        store = queue_store(config, writer, backend)
        store.on_done = bounce_generator(config)
        ended = store.end_leases(reason, owner_prefix).result()
    finally:
        writer.close()
    report_ended(events, ended, why)
    return ended.count


def release_all_leases(
    backend: Backend, events: EventLog, owner_prefix: str | None = None, why: str = ""
) -> int:
    """Release leases held by processes now gone: all of them at start (the starting process
    holds the data directory lock), or one dead worker's (by its owner prefix)."""
    from mailgate.queue.commit import DirectWriter
    from mailgate.queue.ops import release_leases

    writer = DirectWriter(backend)
    try:
        released = writer.submit(
            "release", lambda c: release_leases(c, time.time(), owner_prefix)
        ).result()
    finally:
        writer.close()
    if released:
        events.emit(
            catalog.LEASES_RELEASED,
            count=released,
            why=why or "held when the service last ended",
        )
    return int(released)


def install_excepthooks(events: EventLog) -> None:
    """No exception may end a thread or the process without an event saying so.

    Also silences aiosmtpd's own logger: at INFO it would log every command line,
    AUTH credentials included; our events say what matters, without secrets."""
    mail_log = logging.getLogger("mail.log")
    mail_log.addHandler(logging.NullHandler())
    mail_log.propagate = False
    mail_log.setLevel(logging.ERROR)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        exc = args.exc_value or RuntimeError("unknown")
        events.emit(
            catalog.UNHANDLED_EXCEPTION,
            where=f"thread {args.thread.name if args.thread else '?'}",
            error=repr(exc),
            traceback="".join(traceback.format_exception(exc)),
        )

    def main_hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        events.emit(
            catalog.UNHANDLED_EXCEPTION,
            where="main thread",
            error=repr(exc),
            traceback="".join(traceback.format_exception(kind, exc, tb)),
        )

    threading.excepthook = thread_hook
    sys.excepthook = main_hook


def run_service(config: Config, source: Callable[[], Config] | None = None) -> int:
    """`mailgate run`: start, serve until SIGTERM/SIGINT, stop. Returns the exit status.

    SIGHUP reloads the configuration. If threads are still running after the stop
    deadline the process leaves with os._exit: a wedged thread must never keep it alive.
    """
    events = open_events(config)
    install_excepthooks(events)
    service = Service(config, events, source)
    received: list[str] = []
    reloads: list[int] = []
    _install_signals(service, events, received, reloads)  # before start: no signal is lost
    try:
        service.start()
    except AlreadyRunning as exc:
        events.emit(catalog.ALREADY_RUNNING, data_dir=config.data_dir, pid=exc.pid or "?")
        return 1
    except StoreInUse as exc:
        events.emit(
            catalog.STORE_IN_USE,
            store=exc.store,
            pid=exc.pid or "?",
            holder_data_dir=exc.data_dir,
            data_dir=config.data_dir,
        )
        return 1
    except PortInUse as exc:
        emit_port_in_use(events, exc)
        return 1
    except (StoreError, OSError, CredentialsError) as exc:
        events.emit(catalog.SERVICE_FAILED, reason=f"cannot start: {exc}")
        return 1
    assert service.listener is not None
    host, port = service.listener.address
    events.emit(
        catalog.SERVICE_STARTED,
        version=__version__,
        pid=os.getpid(),
        data_dir=config.data_dir,
        listen=f"{host}:{port}",
    )
    notifier = Notifier()
    reader = service.store.reader() if notifier.enabled else None
    notifier.ready(service.status_line(reader))
    reason = _wait_for_signal(service, notifier, reader, received, reloads)
    if reader is not None:
        reader.close()
    notifier.stopping(f"stopping: {reason}")
    left = service.stop()
    if service.failure:
        events.emit(catalog.SERVICE_FAILED, reason=service.failure)
        code = 1
    else:
        events.emit(catalog.SERVICE_STOPPED, reason=reason)
        code = 1 if left else 0
    if service.event_store is not None:
        with contextlib.suppress(Exception):
            service.event_store.flush()  # the events written after its thread stopped
    if left:
        events.close()
        os._exit(code)
    return code


def emit_port_in_use(events: EventLog, exc: PortInUse) -> None:
    events.emit(catalog.PORT_IN_USE, listen=exc.listen, pid=exc.pid or "?", holder=exc.holder)


def _install_signals(
    service: Service, events: EventLog, received: list[str], reloads: list[int]
) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:  # a second signal: the operator wants out now
            events.emit(catalog.SERVICE_FAILED, reason=f"second {name}: exiting at once")
            os._exit(1)
        received.append(name)
        service.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda signum, frame: reloads.append(signum))


def _wait_for_signal(
    service: Service,
    notifier: Notifier,
    reader: QueueReader | None,
    received: list[str],
    reloads: list[int],
) -> str:
    refresh = service.config.supervise.refresh_every
    next_refresh = time.monotonic() + refresh
    ping_every = notifier.watchdog_interval or 10.0
    next_ping = 0.0
    while not service.stopped.wait(0.2):
        if notifier.enabled and time.monotonic() >= next_ping:
            next_ping = time.monotonic() + min(ping_every, 10.0)
            status = service.status_line(reader)
            if notifier.watchdog_interval and not service.health():
                notifier.watchdog(status)  # only a healthy service keeps systemd's watchdog fed
            else:
                notifier.send(STATUS=status)
        if reloads or (refresh and time.monotonic() >= next_refresh):
            reloads.clear()  # the reload itself runs here, not in the signal handler
            service.reload()
            next_refresh = time.monotonic() + refresh
    return f"{received[0]} received" if received else (service.failure or "stop requested")
