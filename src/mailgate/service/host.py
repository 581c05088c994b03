"""The host of a process: runs its parts from start to exit, the same for every mode.

The lock holder (the single-process service, or the master) takes the data
directory lock, checks the store (a damaged page stops the start, Q159305; a file as
the last clean stop left it is not read again, queue/cleanstop.py) and gives
back the leases left by its predecessors before any part is prepared; a worker
process does none of that. Then every part is prepared (errors reach the caller;
`run` turns each into its event and exit status 1) and started. The serve loop on
the main thread turns parts' ticks, reloads on SIGHUP or every
[supervise] refresh_every, and keeps systemd told (STATUS; the watchdog is fed only
while healthy). A stop halts the parts, stops their threads phase by phase within
[service] stop_timeout (receivers before the committer they hand to), closes them,
and names what did not stop (event 1005). Every way out writes an event: 1001 and
status 0 only for a clean stop; a wedged thread never keeps the process alive.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mailgate import __version__
from mailgate.config.schema import Config
from mailgate.errors import AlreadyRunning, ConfigError, PortInUse, StoreError, StoreInUse
from mailgate.observe import catalog
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog, levels_from_config
from mailgate.queue import cleanstop
from mailgate.queue.lock import DataDirLock
from mailgate.queue.nodes import NodeNameInUse
from mailgate.queue.open import StoreBackend, open_backend
from mailgate.security.passwords import CredentialsError
from mailgate.service import wiring
from mailgate.service.connectors import node_connectors
from mailgate.service.leases import release_leases_at_start
from mailgate.service.nodes import Membership
from mailgate.service.part import Part, Phase
from mailgate.service.reload import ReloadState, live_part, needs_restart, read_new_config
from mailgate.service.signals import Signals
from mailgate.supervise.systemd import Notifier

TICK = 0.1  # the serve loop's turn
MONITOR_SILENT = 5.0  # the monitor ticks every 0.2 s; silence this long means it is wedged
READY_WAIT = 15.0  # longest wait for the parts to serve before systemd hears READY
OWN_MOMENT = 0.5  # the host's own threads only wait in short steps: a moment past the deadline
P = TypeVar("P", bound=Part)


class Host:
    def __init__(
        self,
        config: Config,
        events: EventLog,
        *,
        owner: bool,
        source: Callable[[], Config] | None = None,
        label: str = "thread",
        exit_hard: bool = False,
    ) -> None:
        """`owner`: this process holds the data directory lock (single-process service or
        master). `source` re-reads the configuration for a reload (none: a worker takes
        its master's). `label` names threads in health reasons; `exit_hard` leaves with
        os._exit even after a clean stop (the master: nothing of it may linger)."""
        self.config = config
        self.events = events
        self.owner = owner
        self.source = source
        self.label = label
        self.exit_hard = exit_hard
        self.lock = DataDirLock(config.data_dir, config.queue_path) if owner else None
        self.supervisor = wiring.make_supervisor(config, events, self.fail)
        self.counters = Counters()  # of this process, bumped by its stages
        self.parts: list[Part] = []
        self.stopped = threading.Event()
        self.stop_reason = ""
        self.failure: str | None = None
        self.reloads = ReloadState()
        self.started_at = time.time()
        self.membership: Membership | None = None  # this node's entry in the queue (owner)
        self._backend: StoreBackend | None = None  # the store the lock holder opened

    def part(self, kind: type[P]) -> P:
        found = self.find(kind)
        if found is None:
            raise LookupError(f"this process has no {kind.__name__}")
        return found

    def find(self, kind: type[P]) -> P | None:
        return next((p for p in self.parts if isinstance(p, kind)), None)

    # --- start -------------------------------------------------------------------------------
    def start(self) -> None:
        """Lock, check the store, prepare every part, start every thread.

        Raises AlreadyRunning, StoreInUse, PortInUse, StoreError, CredentialsError or
        OSError before any thread starts."""
        if self.lock is not None:
            self.lock.acquire()
        prepared: list[Part] = []
        try:
            if self.lock is not None:
                self._open_store(self.lock)
            for part in self.parts:
                part.prepare()
                prepared.append(part)
        except BaseException:
            for part in reversed(prepared):
                part.close()
            if self.lock is not None:
                self.lock.release()
            raise
        self.started_at = time.time()
        self.supervisor.start()
        for part in self.parts:
            part.start(self.supervisor)

    def _open_store(self, lock: DataDirLock) -> None:
        config = self.config
        node_connectors(config)  # an unknown [service] connectors name stops it here
        config.postoffice_root.mkdir(parents=True, exist_ok=True)
        backend = open_backend(config.queue, config.data_dir)
        self._backend = backend
        # A damaged page stops the start, before any part or worker runs on it (Q159305);
        # a file exactly as the last clean stop left it needs no reading of every page
        # (queue/cleanstop.py: a million queued messages would add seconds to a restart).
        as_left = lock.previous_pid is None and cleanstop.unchanged(backend)
        self._clean_stop_failed("remove", cleanstop.forget(backend))
        backend.initialize(check=config.queue.check_at_start and not as_left)
        # Joined before any lease is given back: a second node under a live one's name is
        # refused before it could release that node's work.
        self.membership = Membership(config, backend, self.events)
        self.membership.join()
        release_leases_at_start(backend, self.events, config, lock)

    def _clean_stop_failed(self, what: str, error: str | None) -> None:
        if error is not None and self._backend is not None:
            path = cleanstop.record_path(self._backend)
            self.events.emit(catalog.CLEAN_STOP_NOT_RECORDED, what=what, path=path, error=error)

    # --- running -----------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stopped.set()

    def fail(self, reason: str) -> None:
        """Ask for a stop that ends with a non-zero exit status."""
        self.failure = self.failure or reason
        self.stopped.set()

    def health(self) -> list[str]:
        """Why the process is unhealthy; an empty list means healthy."""
        stats = self.supervisor.statistics()
        reasons = [f"{self.label} {name} failed" for name in stats.failed]
        reasons += [f"{self.label} {name} stalled" for name in stats.stalled]
        monitor = self.supervisor.handle("supervisor")
        if monitor is not None and time.time() - monitor.last_progress > MONITOR_SILENT:
            reasons.append("the supervisor's monitor is not turning")
        for part in self.parts:
            reasons += part.health()
        if self.failure:
            reasons.append(self.failure)
        return reasons

    def status_line(self) -> str:
        """One line for systemd's STATUS: health, thread count, what the parts add."""
        reasons = self.health()
        health = "healthy" if not reasons else "UNHEALTHY: " + "; ".join(reasons)
        words = [health, f"{len(self.supervisor.statistics().threads)} threads"]
        words += [s for part in self.parts if (s := part.summary())]
        return "; ".join(words)

    def reload_state(self) -> dict[str, Any]:
        return self.reloads.json()

    def reload(self, new: Config | None = None) -> dict[str, Any]:
        """Re-read the configuration (or take `new`, validated by the master) and apply what
        can change live; {"reloaded": False, ...} if it was refused (the running one stays)."""
        answer = self._reload(new)
        self.reloads.record(bool(answer["reloaded"]))
        return answer

    def _reload(self, new: Config | None) -> dict[str, Any]:
        if new is None:
            if self.source is None:
                return {"reloaded": False}
            read = read_new_config(self.source, self.events)
            if isinstance(read, str):
                return {"reloaded": False, "problems": read}
            new = read
        try:  # built before anything is swapped: a failure leaves all as it was
            levels = levels_from_config(new.log.levels)
            steps = [step for part in self.parts if (step := part.reload(new)) is not None]
        except ConfigError as exc:  # a part found the new configuration wrong for it
            problems = "; ".join(f"{k}: {r}" for k, r in exc.problems)
            self.events.emit(catalog.CONFIG_INVALID, source="reload", problems=problems)
            return {"reloaded": False, "problems": problems}
        except Exception as exc:
            problems = f"cannot apply it: {exc!r}"
            self.events.emit(catalog.CONFIG_INVALID, source="reload", problems=problems)
            return {"reloaded": False, "problems": problems}
        for category, level in levels.items():
            self.events.set_level(category, level)
        restart = needs_restart(self.config, new)
        self.config = live_part(self.config, new)
        answer: dict[str, Any] = {"reloaded": True}
        for step in steps:
            answer.update(step() or {})
        if self.owner:  # under a master, the master reports the reload once
            self.events.emit(
                catalog.CONFIG_RELOADED,
                routes=len(new.routes),
                restart_needed=", ".join(restart) or "nothing",
            )
        return answer

    def serve(self, signals: Signals | None = None, notifier: Notifier | None = None) -> str:
        """Turn until a stop is asked; the reason."""
        refresh = self.config.supervise.refresh_every if signals is not None else 0.0
        next_refresh = time.monotonic() + refresh
        ping_every = min((notifier.watchdog_interval if notifier else None) or 10.0, 10.0)
        next_ping = 0.0
        while not self.stopped.wait(TICK):
            for part in self.parts:
                part.tick()
            if (signals is not None and signals.take_reload()) or (
                refresh and time.monotonic() >= next_refresh
            ):
                self.reload()  # here, not in the signal handler
                next_refresh = time.monotonic() + refresh
            if notifier is not None and notifier.enabled and time.monotonic() >= next_ping:
                next_ping = time.monotonic() + ping_every
                status = self.status_line()
                if notifier.watchdog_interval and not self.health():
                    notifier.watchdog(status)  # only a healthy service keeps systemd's watchdog fed
                else:
                    notifier.send(STATUS=status)
        return self.stop_reason or self.failure or "stop requested"

    # --- stop --------------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Stop every part within [service] stop_timeout; what was left running."""
        self.stopped.set()
        timeout = self.config.service.stop_timeout
        deadline = time.monotonic() + timeout
        left: list[str] = []
        for part in self.parts:
            left += part.halt(deadline)
        groups = [[n for part in self.parts for n in part.threads(phase)] for phase in Phase]
        own = max(deadline, time.monotonic() + OWN_MOMENT)
        left += self.supervisor.stop_all(groups, own)
        if left:
            self.events.emit(catalog.STOP_INCOMPLETE, timeout=timeout, threads=", ".join(left))
        for part in reversed(self.parts):
            part.close()
        if self.lock is not None:
            if not left and self._backend is not None:  # every thread and worker is done
                self._clean_stop_failed("write", cleanstop.record(self._backend))
            self.lock.release()
        return left

    def abort(self) -> None:
        for part in self.parts:
            part.abort()

    # --- the whole life ----------------------------------------------------------------------
    def run(self, signals: Signals) -> int:
        """`mailgate run`: start, serve until a stop, stop; the exit status (0 only for a
        clean stop). `signals` must be installed before, so that no signal is lost."""
        if not self._started():
            return 1
        listen = next((a for part in self.parts if (a := part.listen())), "")
        self.events.emit(
            catalog.SERVICE_STARTED,
            version=__version__,
            pid=os.getpid(),
            data_dir=self.config.data_dir,
            listen=listen,
        )
        notifier = Notifier()
        deadline = time.monotonic() + READY_WAIT
        for part in self.parts:
            part.wait_ready(deadline)
        if notifier.enabled:
            notifier.ready(self.status_line())
        reason = self.serve(signals, notifier)
        notifier.stopping(f"stopping: {reason}")
        left = self.stop()
        unclean = [name for part in self.parts for name in part.unclean()]
        if self.failure:
            self.events.emit(catalog.SERVICE_FAILED, reason=self.failure)
            code = 1
        else:
            self.events.emit(catalog.SERVICE_STOPPED, reason=reason)
            code = 1 if (left or unclean) else 0
        for part in self.parts:
            part.flush()  # the events written after the event store's thread stopped
        if left or self.exit_hard:
            self.events.close()
            os._exit(code)  # no thread of ours may keep the process alive
        return code

    def _started(self) -> bool:
        """Start; False once a failure to start was said in its event."""
        events, config = self.events, self.config
        try:
            self.start()
        except AlreadyRunning as exc:
            events.emit(catalog.ALREADY_RUNNING, data_dir=config.data_dir, pid=exc.pid or "?")
        except StoreInUse as exc:
            events.emit(
                catalog.STORE_IN_USE,
                store=exc.store,
                pid=exc.pid or "?",
                holder_data_dir=exc.data_dir,
                data_dir=config.data_dir,
            )
        except PortInUse as exc:
            emit_port_in_use(events, exc)
        except NodeNameInUse as exc:
            held = exc.holder
            events.emit(catalog.NODE_NAME_IN_USE, node=held.name, store=exc.store, host=held.host,
                        pid=held.pid, holder_data_dir=held.data_dir, age=exc.age)  # fmt: skip
        except (StoreError, OSError, CredentialsError, ConfigError) as exc:
            events.emit(catalog.SERVICE_FAILED, reason=f"cannot start: {exc}")
        else:
            return True
        return False


def emit_port_in_use(events: EventLog, exc: PortInUse) -> None:
    events.emit(catalog.PORT_IN_USE, listen=exc.listen, pid=exc.pid or "?", holder=exc.holder)
