"""`mailgate run`: the master process and its workers.

The master takes the data directory lock, prepares the store (and releases every
lease, since all holders are gone), binds the control socket and opens the SMTP
port (and the implicit-TLS one), then starts worker processes by role: `receive`
(one per core by default, all accepting on the one listening socket they inherit,
so the port belongs to this instance alone: a second one is refused, event 1020)
and `interchange` (delivery, scheduling, pickup). Stages in different processes
talk only through the queue, plus a wake-up datagram.

It supervises its workers as the supervisor does threads: a dead worker's leases
are released at once and it is restarted with back-off and a restart budget (one
that dies before its first heartbeat waits longer); a worker silent for
`worker_silence` is ended with SIGKILL, which, unlike a thread, a process can
always be. Workers are started from the main thread only, because each asks the
kernel to kill it when the thread that started it ends (PR_SET_PDEATHSIG): a master
killed with SIGKILL leaves no orphan serving the port.

The master serves control for the whole service, writes every event (workers send
theirs over their channel) and reads the CPU time of every worker thread from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from mailgate import __version__
from mailgate.bootstrap import (
    ReloadState,
    emit_port_in_use,
    end_dead_leases,
    install_excepthooks,
    make_supervisor,
    needs_restart,
    open_events,
    read_new_config,
    release_leases_at_start,
    smtp_secrets,
    start_event_store,
)
from mailgate.config.schema import Config
from mailgate.control.server import ControlServer, bind_control, socket_path
from mailgate.errors import AlreadyRunning, PortInUse, StoreError, StoreInUse
from mailgate.master.processes import WORKER_CONFIG, WORKER_SOCKETS, WorkerProcess, WorkerSpec
from mailgate.observe import catalog
from mailgate.observe.events import EventLog, levels_from_config
from mailgate.observe.eventwriter import EventStoreWriter
from mailgate.queue.lock import DataDirLock
from mailgate.queue.sqlite import SqliteBackend
from mailgate.receive.listeners import Listeners, open_listeners
from mailgate.security.passwords import CredentialsError
from mailgate.supervise.budget import RestartBudget
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.systemd import Notifier
from mailgate.web.admin import AdminServer, open_admin
from mailgate.web.view import MasterView

EOF_WAIT = 2.0  # seconds a dead worker's channel may take to deliver its last events


class Master:
    def __init__(
        self, config: Config, events: EventLog, source: Callable[[], Config] | None = None
    ) -> None:
        self.config = config  # validated here, handed to every worker: one source of truth
        self.events = events
        self.source = source
        self.lock = DataDirLock(config.data_dir, config.queue_path)  # and the store's
        self.backend = SqliteBackend(config.queue_path)
        self.stopping = False
        self.failure: str | None = None
        self.reloads = ReloadState()
        self.supervisor = make_supervisor(config, events, self.fail)
        count = config.processes.receive or os.cpu_count() or 1
        specs = [WorkerSpec("receive", f"receive-{n}") for n in range(1, count + 1)]
        specs.append(WorkerSpec("interchange", "interchange-1"))
        sv = config.supervise
        self.workers = [
            WorkerProcess(spec, RestartBudget(sv.max_restarts, sv.restart_window)) for spec in specs
        ]
        self.listeners: Listeners | None = None  # open for the life of the master
        self.control_socket: socket.socket | None = None
        self.admin: AdminServer | None = None
        self.listen = config.smtp.listen
        self.requested_stop = False
        self.stop_reason = ""
        self.unclean: list[str] = []
        self.event_store: EventStoreWriter | None = None

    # --- start -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Lock, prepare the store, bind control, open the ports; errors reach the caller."""
        self.lock.acquire()
        try:
            self.config.postoffice_root.mkdir(parents=True, exist_ok=True)
            # A damaged page stops the start, before any worker runs on it (Q159305).
            self.backend.initialize(check=self.config.queue.check_at_start)
            release_leases_at_start(self.backend, self.events, self.config, self.lock)
            self._open_listeners()  # PortInUse names the instance that holds a port
            self.control_socket = bind_control(socket_path(self.config.data_dir))
            self.admin = open_admin(self.config.admin, lambda: MasterView(self))  # bound now
            smtp_secrets(self.config.smtp)  # a bad certificate or credentials file fails here
        except BaseException:
            if self.listeners is not None:
                self.listeners.close()
            self.lock.release()
            raise
        from mailgate.master.commands import MasterCommands

        sup = self.supervisor
        sup.start()
        if self.config.log.store_events:
            self.event_store = start_event_store(sup, self.events, self.config)
        sup.spawn(
            "control", "control",
            ControlServer(self.control_socket, MasterCommands(self).table()), critical=True,
        )  # fmt: skip
        sup.spawn("channel", "channel", self._channel, critical=True, stall_detection=False)
        sup.spawn("workers", "workers", self._watch_workers, critical=True)
        self._start_admin()

    def _start_admin(self) -> None:
        """The admin HTTP listener (/metrics, /healthz, /status), bound in start."""
        if self.admin is not None:
            self.supervisor.spawn("admin", "admin", self.admin)

    def _open_listeners(self) -> None:
        """Listen on the ports, once, for every receive worker (port 0 becomes a real port).

        No SO_REUSEPORT: the kernel then refuses any other socket on these ports, so no
        second instance can share them, and a worker's death closes nothing."""
        self.listeners = open_listeners(self.config.smtp)
        self.listen = _hostport(self.listeners.smtp)
        if self.listeners.implicit_tls is not None:
            tls = _hostport(self.listeners.implicit_tls)
            smtp = self.config.smtp.model_copy(update={"implicit_tls_listen": tls})
            self.config = self.config.model_copy(update={"smtp": smtp})

    def spawn_due(self) -> None:
        """Start workers whose (re)start is due. Called from the main thread only (see above)."""
        now = time.time()
        for worker in self.workers:
            if self.stopping or worker.failed or worker.restart_at is None:
                continue
            if now < worker.restart_at:
                continue
            self._spawn(worker)

    def _spawn(self, worker: WorkerProcess) -> None:
        command = [
            sys.executable, "-m", "mailgate", "worker", "--role", worker.spec.role,
            "--name", worker.name,
        ]  # fmt: skip
        env = {**os.environ, WORKER_CONFIG: self.worker_config()}
        env.pop(WORKER_SOCKETS, None)
        fds: dict[str, int] = {}
        if worker.spec.role == "receive" and self.listeners is not None:
            fds = self.listeners.fds()  # only the workers that accept mail hold the ports
            env[WORKER_SOCKETS] = json.dumps(fds)
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=env,
            pass_fds=tuple(fds.values()),
        )  # fmt: skip
        worker.started(proc)
        self.events.emit(
            catalog.WORKER_STARTED, worker=worker.name, role=worker.spec.role, pid=proc.pid
        )

    def worker_config(self) -> str:
        """The running configuration as JSON, with the port the master reserved."""
        smtp = self.config.smtp.model_copy(update={"listen": self.listen})
        # A worker's own stop deadline ends a little before the master's, so the worker can
        # still report which of its threads did not stop before the master kills it.
        timeout = self.config.service.stop_timeout
        service = self.config.service.model_copy(
            update={"stop_timeout": max(0.5, timeout - min(1.0, timeout / 4))}
        )
        # Workers serve no admin HTTP: they never get the token.
        admin = self.config.admin.model_copy(update={"listen": "", "token": ""})
        update = {"smtp": smtp, "service": service, "admin": admin}
        return self.config.model_copy(update=update).model_dump_json()

    def reload(self) -> dict[str, Any]:
        """Re-read and validate the file here, once; workers get the validated result."""
        answer = self._reload()
        self.reloads.record(bool(answer["reloaded"]))
        return answer

    def _reload(self) -> dict[str, Any]:
        if self.source is None:
            return {"reloaded": False}
        new = read_new_config(self.source, self.events)
        if isinstance(new, str):
            return {"reloaded": False, "problems": new}
        try:
            levels = levels_from_config(new.log.levels)
        except Exception as exc:  # validated by the schema: a bug, reported as 1100 anyway
            problems = f"cannot apply it: {exc!r}"
            self.events.emit(catalog.CONFIG_INVALID, source="reload", problems=problems)
            return {"reloaded": False, "problems": problems}
        restart = needs_restart(self.config, new)
        self.config = self.config.model_copy(update={"route": new.route, "log": new.log})
        for category, level in levels.items():
            self.events.set_level(category, level)
        payload = {"config": self.worker_config()}
        answers = {}
        for worker in self.workers:
            if worker.alive:
                try:
                    answers[worker.name] = worker.call("reload", payload, 2.0)
                except (TimeoutError, RuntimeError) as exc:
                    answers[worker.name] = {"error": str(exc) or "no answer"}
        self.events.emit(
            catalog.CONFIG_RELOADED,
            routes=len(new.routes),
            restart_needed=", ".join(restart) or "nothing",
        )
        return {"reloaded": True, "workers": answers}

    # --- the channel: events, heartbeats and replies from every worker -----------------------
    def _channel(self, handle: ThreadHandle) -> None:
        selector = selectors.DefaultSelector()
        registered: dict[int, WorkerProcess] = {}
        try:
            while not handle.stopping or any(w.alive for w in self.workers):
                handle.progress()
                for worker in self.workers:
                    stdout = worker.proc.stdout if worker.proc is not None else None
                    if (
                        stdout is not None
                        and not stdout.closed
                        and stdout.fileno() not in registered
                    ):
                        selector.register(stdout.fileno(), selectors.EVENT_READ)
                        registered[stdout.fileno()] = worker
                if not registered:
                    handle.wait(0.2)
                    if handle.stopping:
                        return
                    continue
                for key, _ in selector.select(timeout=0.2):
                    worker = registered[int(key.fd)]
                    if not self._read(worker, int(key.fd)):
                        selector.unregister(key.fd)
                        del registered[int(key.fd)]
                        worker.channel_closed = True
        finally:
            selector.close()

    def _read(self, worker: WorkerProcess, fd: int) -> bool:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        worker.buffer += data
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            self._message(worker, line)
        return True

    def _message(self, worker: WorkerProcess, line: bytes) -> None:
        try:
            message = json.loads(line)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            return
        worker.last_heard = time.time()
        if kind == "event":
            event = catalog.CATALOG.get(message.get("id", -1))
            if event is catalog.WORKER_EXITING:
                worker.last_words = str((message.get("fields") or {}).get("reason", ""))
            if event is not None:
                self.events.forward(
                    event,
                    message.get("fields") or {},
                    float(message.get("ts") or time.time()),
                    int(message.get("pid") or 0),
                    str(message.get("thread") or worker.name),
                )
        elif kind == "status":
            worker.status = message
            worker.heartbeats += 1
        elif kind == "reply":
            worker.reply(message)

    # --- watching the workers ----------------------------------------------------------------
    def _watch_workers(self, handle: ThreadHandle) -> None:
        while not handle.wait(0.2):
            handle.busy()
            now = time.time()
            for worker in self.workers:
                if worker.proc is None or worker.failed or self.stopping:
                    continue
                if worker.proc.poll() is not None:
                    # Its last words (event 5020) come first: wait for its channel's EOF,
                    # a moment at most (its stdout could be held open by nothing else).
                    if not worker.handled_exit and (
                        worker.channel_closed or now - worker.last_heard > EOF_WAIT
                    ):
                        self._died(worker, now)
                elif now - worker.last_heard > self.config.supervise.worker_silence:
                    self.events.emit(
                        catalog.WORKER_KILLED,
                        worker=worker.name,
                        role=worker.spec.role,
                        pid=worker.pid,
                        seconds=round(now - worker.last_heard, 1),
                    )
                    worker.kill()
                    worker.last_heard = now  # its death is handled on a later tick
            handle.progress()
            handle.idle()

    def _died(self, worker: WorkerProcess, now: float) -> None:
        assert worker.proc is not None
        worker.handled_exit = True
        code = worker.proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if worker.last_words:
            how += f": {worker.last_words}"
        prefix = f"{self.config.service.hostname}:{worker.pid}:"
        try:
            why, reason = f"held by dead {worker.name}", "its worker process died"
            end_dead_leases(self.backend, self.events, self.config, prefix, why, reason)
        except StoreError as exc:  # the scheduler's lease expiry still recovers them later
            self.events.emit(catalog.STORE_ERROR, operation="release dead worker", error=str(exc))
        if not worker.budget.spend(now):
            worker.failed = True
            self.events.emit(
                catalog.WORKER_FAILED,
                worker=worker.name,
                role=worker.spec.role,
                restarts=worker.budget.used,
                window=int(worker.budget.window),
            )
            # Without this worker the service cannot do its job: end it, non-zero (Q151431).
            why = f": {worker.last_words}" if worker.last_words else ""
            self.fail(f"worker {worker.name} failed{why}", fatal=True)
            return
        # One that died before it ever reported backs off longer (a structural problem).
        backoff = worker.budget.backoff(structural=worker.heartbeats == 0)
        worker.restarts += 1
        worker.restart_at = now + backoff
        self.events.emit(
            catalog.WORKER_EXITED,
            worker=worker.name,
            role=worker.spec.role,
            pid=worker.pid,
            how=how,
            restarts=worker.restarts,
            backoff=backoff,
        )

    # --- health and stopping ------------------------------------------------------------------
    def health(self) -> list[str]:
        stats = self.supervisor.statistics()
        reasons = [f"master thread {n} failed" for n in stats.failed]
        reasons += [f"master thread {n} stalled" for n in stats.stalled]
        now = time.time()
        for worker in self.workers:
            if worker.failed:
                reasons.append(f"worker {worker.name} failed")
            elif not worker.alive:
                reasons.append(f"worker {worker.name} is not running")
            elif not worker.heartbeats:
                reasons.append(f"worker {worker.name} is starting")
            elif now - worker.last_heard > 5.0:
                reasons.append(f"worker {worker.name} silent for {now - worker.last_heard:.0f}s")
            else:
                reasons += [f"{worker.name}: {r}" for r in worker.status.get("health", [])]
        if self.failure:
            reasons.append(self.failure)
        return reasons

    def fail(self, reason: str, *, fatal: bool = False) -> None:
        if fatal or self.config.supervise.exit_on_failure or reason.startswith("critical"):
            self.failure = self.failure or reason
            self.requested_stop = True

    def stop(self) -> list[str]:
        """SIGTERM every worker; SIGKILL whatever outlives the deadline.

        All at once: processes share nothing but the durable queue, so there is no order
        to keep (receivers answer 421 and stop; interchange finishes or releases work)."""
        self.stopping = True
        deadline = time.monotonic() + self.config.service.stop_timeout
        # The port closes as soon as the stop begins (once the receivers close their copies
        # too): clients are refused and go to another MX rather than wait in a backlog
        # that nobody will accept from.
        if self.listeners is not None:
            self.listeners.close()
        left: list[str] = []
        group = [w for w in self.workers if w.alive]
        for worker in group:
            worker.signal(signal.SIGTERM)
        for worker in group:
            assert worker.proc is not None
            try:
                code = worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                left.append(f"{worker.name} (pid {worker.pid})")
                worker.kill()
                continue
            if code != 0:  # it stopped, but not cleanly (it named its own threads)
                self.unclean.append(worker.name)
        # The master's own threads only wait in short steps: they get a moment of their own.
        own = max(deadline, time.monotonic() + 0.5)
        left += self.supervisor.stop_all([["workers"], ["channel"], ["control"]], own)
        if left:
            self.events.emit(
                catalog.STOP_INCOMPLETE,
                timeout=self.config.service.stop_timeout,
                threads=", ".join(left),
            )
        if self.control_socket is not None:
            self.control_socket.close()
            socket_path(self.config.data_dir).unlink(missing_ok=True)
        if self.admin is not None:
            self.admin.close()
        self.lock.release()
        return left


def run_master(config: Config, source: Callable[[], Config] | None = None) -> int:
    """`mailgate run` (multi-process): returns the exit status, 0 only for a clean stop."""
    events = open_events(config)
    install_excepthooks(events)
    master = Master(config, events, source)
    reloads: list[int] = []
    _install_signals(master, events, reloads)  # before anything starts: no signal is lost
    try:
        master.start()
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
    master.spawn_due()
    events.emit(
        catalog.SERVICE_STARTED,
        version=__version__,
        pid=os.getpid(),
        data_dir=config.data_dir,
        listen=master.listen,
    )
    notifier = Notifier()
    _wait_until_ready(master, 15.0)
    notifier.ready(_status_line(master))
    reason = _serve(master, notifier, reloads)
    notifier.stopping(f"stopping: {reason}")
    left = master.stop()
    if master.failure:
        events.emit(catalog.SERVICE_FAILED, reason=master.failure)
        code = 1
    else:
        events.emit(catalog.SERVICE_STOPPED, reason=reason)
        code = 1 if (left or master.unclean) else 0
    if master.event_store is not None:
        with contextlib.suppress(Exception):
            master.event_store.flush()  # the events written after its thread stopped
    events.close()
    os._exit(code)  # no thread of ours may keep the process alive


def _hostport(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wait_until_ready(master: Master, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(w.heartbeats for w in master.workers):
        if any(w.proc is not None and w.proc.poll() is not None for w in master.workers):
            return
        time.sleep(0.05)


def _status_line(master: Master) -> str:
    reasons = master.health()
    alive = sum(1 for w in master.workers if w.alive)
    health = "healthy" if not reasons else "UNHEALTHY: " + "; ".join(reasons)
    return f"{health}; {alive}/{len(master.workers)} workers"


def _install_signals(master: Master, events: EventLog, reloads: list[int]) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if master.stop_reason:  # a second signal: out now, and take the workers along
            events.emit(catalog.SERVICE_FAILED, reason=f"second {name}: exiting at once")
            for worker in master.workers:
                worker.kill()
            os._exit(1)
        master.stop_reason = f"{name} received"
        master.requested_stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda signum, frame: reloads.append(signum))


def _serve(master: Master, notifier: Notifier, reloads: list[int]) -> str:
    ping_every = min(notifier.watchdog_interval or 10.0, 10.0)
    next_ping = 0.0
    while not master.requested_stop:
        time.sleep(0.1)
        master.spawn_due()
        if reloads:
            reloads.clear()  # the reload runs here, not in the signal handler
            master.reload()
        if notifier.enabled and time.monotonic() >= next_ping:
            next_ping = time.monotonic() + ping_every
            if notifier.watchdog_interval and not master.health():
                notifier.watchdog(_status_line(master))
            else:
                notifier.send(STATUS=_status_line(master))
    return master.stop_reason or master.failure or "stop requested"
