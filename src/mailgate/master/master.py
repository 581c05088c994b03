"""The master's part: the worker processes of `mailgate run`, started, watched, restarted.

In `prepare` the master opens the SMTP port (and the implicit-TLS one) once, for
every receive worker: no SO_REUSEPORT, so the kernel refuses any other socket on
them and the port belongs to this instance alone (a second one is refused, event
1020), and a worker's death closes nothing. It starts workers by role: `receive`
(one per core by default, all accepting on the sockets they inherit) and
`interchange` (delivery, scheduling, pickup). Stages in different processes talk
only through the queue, plus a wake-up datagram.

It supervises its workers as the supervisor does threads: a dead worker's leases
are ended at once and it is restarted with the supervisor's own restart budget and
back-off (supervise/budget.py; one that dies before its first heartbeat waits
longer); a worker silent for `worker_silence` is ended with SIGKILL, which, unlike a
thread, a process can always be. Workers are started from the main thread only
(`tick`), because each asks the kernel to kill it when the thread that started it
ends (PR_SET_PDEATHSIG): a master killed with SIGKILL leaves no orphan serving the
port. A stop closes the port at once, then SIGTERMs every worker and SIGKILLs
whatever outlives the deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailgate.config.schema import Config
from mailgate.errors import ConfigError, StoreError
from mailgate.master.inbox import WorkerInbox
from mailgate.master.processes import WORKER_CONFIG, WORKER_SOCKETS, WorkerProcess, WorkerSpec
from mailgate.observe import catalog
from mailgate.observe.catalog import EventType
from mailgate.observe.events import EventLog
from mailgate.queue.nodes import node_owner
from mailgate.queue.open import open_backend
from mailgate.receive.board import SessionBoard
from mailgate.receive.listeners import Listeners, open_listeners
from mailgate.service import wiring
from mailgate.service.leases import end_dead_leases
from mailgate.service.part import Apply, Part, Phase
from mailgate.service.reload import live_part
from mailgate.supervise.budget import RestartBudget
from mailgate.supervise.handle import ThreadHandle
from mailgate.supervise.supervisor import Supervisor

EOF_WAIT = 2.0  # seconds a dead worker's channel may take to deliver its last events
SILENT = 5.0  # a worker's heartbeat comes every second: this long without one is news
RELOAD_ANSWER = 2.0


class Master(Part):
    def __init__(self, config: Config, events: EventLog, fail: Callable[[str], None]) -> None:
        self.config = config  # validated here, handed to every worker: one source of truth
        self.events = events
        self.fail = fail
        self.backend = open_backend(config.queue, config.data_dir)
        self.stopping = False
        count = config.processes.receive or os.cpu_count() or 1
        specs = [WorkerSpec("receive", f"receive-{n}") for n in range(1, count + 1)]
        specs.append(WorkerSpec("interchange", "interchange-1"))
        sv = config.supervise
        self.workers = [
            WorkerProcess(spec, RestartBudget(sv.max_restarts, sv.restart_window)) for spec in specs
        ]
        self.receivers = [w for w in self.workers if w.spec.role == "receive"]
        self.sessions = SessionBoard.create(len(self.receivers))  # per address, instance-wide
        self.listeners: Listeners | None = None  # open for the life of the master
        self.listen_at = config.smtp.listen
        self.unclean_workers: list[str] = []

    # --- start ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Listen on the ports, once, for every receive worker (port 0 becomes a real port);
        a bad certificate or credentials file fails here, before any worker starts."""
        self.listeners = open_listeners(self.config.smtp)  # PortInUse names the holder
        try:
            wiring.smtp_secrets(self.config.smtp)
        except BaseException:
            self.close()
            raise
        self.listen_at = _hostport(self.listeners.smtp)
        if self.listeners.implicit_tls is not None:
            tls = _hostport(self.listeners.implicit_tls)
            smtp = self.config.smtp.model_copy(update={"implicit_tls_listen": tls})
            self.config = self.config.model_copy(update={"smtp": smtp})

    def start(self, sup: Supervisor) -> None:
        sup.spawn(
            "channel", "channel", WorkerInbox(self.workers, self.events), critical=True,
            stall_detection=False,
        )  # fmt: skip
        sup.spawn("workers", "workers", self._watch, critical=True)
        self.spawn_due()

    def tick(self) -> None:
        self.spawn_due()

    def wait_ready(self, deadline: float) -> None:
        """Until every worker has sent a heartbeat, or one has died."""
        while time.monotonic() < deadline and not all(w.heartbeats for w in self.workers):
            if any(w.proc is not None and w.proc.poll() is not None for w in self.workers):
                return
            time.sleep(0.05)

    def spawn_due(self) -> None:
        """Start workers whose (re)start is due. Called from the main thread only (see above)."""
        now = time.time()
        for worker in self.workers:
            if self.stopping or worker.failed or worker.restart_at is None:
                continue
            if now >= worker.restart_at:
                self._spawn(worker)

    def _spawn(self, worker: WorkerProcess) -> None:
        command = [
            sys.executable, "-m", "mailgate", "worker", "--role", worker.spec.role,
            "--name", worker.name,
        ]  # fmt: skip
        env = {**os.environ, WORKER_CONFIG: str(self.write_worker_config())}
        env.pop(WORKER_SOCKETS, None)
        fds: dict[str, int] = {}
        if worker.spec.role == "receive" and self.listeners is not None:
            fds = self.listeners.fds()  # only the workers that accept mail hold the ports
            env[WORKER_SOCKETS] = json.dumps({**fds, **self._board_row(worker)})
            fds["sessions"] = self.sessions.fd
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=env,
            pass_fds=tuple(fds.values()),
        )  # fmt: skip
        worker.started(proc)
        self.events.emit(
            catalog.WORKER_STARTED, worker=worker.name, role=worker.spec.role, pid=proc.pid
        )

    def write_worker_config(self) -> Path:
        """The workers' configuration in `<data_dir>/worker-config.json`, mode 0600, replaced
        whole (a worker starting meanwhile reads the old or the new one, never half)."""
        path = self.config.data_dir / "worker-config.json"
        fresh = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode is not applied to a file left behind
            os.write(fd, self.worker_config().encode())
        finally:
            os.close(fd)
        os.replace(fresh, path)
        return path

    def _board_row(self, worker: WorkerProcess) -> dict[str, int]:
        """Where a receive worker counts its sessions in the shared board (board.py)."""
        return {
            "sessions": self.sessions.fd,
            "session_rows": self.sessions.rows,
            "session_row": self.receivers.index(worker),
        }

    def worker_config(self) -> str:
        """The running configuration as JSON, with the port the master reserved."""
        smtp = self.config.smtp.model_copy(update={"listen": self.listen_at})
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

    def reload(self, new: Config) -> Apply:
        """Workers get the configuration validated here, once."""
        unbuilt = wiring.unbuilt_routes(self.config, new)
        if unbuilt:  # the workers' connectors are built at their start: refused for all
            raise ConfigError(unbuilt)

        def apply() -> dict[str, Any]:
            self.config = live_part(self.config, new)
            payload = {"config": self.worker_config()}
            answers = {}
            for worker in self.workers:
                if worker.alive:
                    try:
                        answers[worker.name] = worker.call("reload", payload, RELOAD_ANSWER)
                    except (TimeoutError, RuntimeError) as exc:
                        answers[worker.name] = {"error": str(exc) or "no answer"}
            return {"workers": answers}

        return apply

    # --- watching the workers ------------------------------------------------------------------
    def _watch(self, handle: ThreadHandle) -> None:
        """Body of the `workers` thread."""
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
                    seconds = round(now - worker.last_heard, 1)
                    self._tell(catalog.WORKER_KILLED, worker, seconds=seconds)
                    worker.kill()
                    worker.last_heard = now  # its death is handled on a later tick
                else:
                    self._end_if_stuck(worker)
            handle.progress()
            handle.idle()

    def _end_if_stuck(self, worker: WorkerProcess) -> None:
        """SIGKILL a worker whose heartbeat reports a critical thread stalled past
        [supervise] stall_grace that its own supervisor cannot replace (the SMTP loop, a
        committer): it would heart-beat, unhealthy, forever. Its death is handled, and it
        restarted within its budget, on a later tick, as for any worker that died."""
        grace = self.config.supervise.stall_grace
        stuck = {n: s for n, s in worker.status.get("stuck", {}).items() if s > grace}
        if not stuck or worker.killed:
            return
        thread, seconds = max(stuck.items(), key=lambda item: item[1])
        self._tell(
            catalog.WORKER_STUCK, worker, thread=thread, seconds=round(seconds, 1),
            grace=round(grace, 1),
        )  # fmt: skip
        worker.kill()
        worker.killed = True

    def _died(self, worker: WorkerProcess, now: float) -> None:
        assert worker.proc is not None
        worker.handled_exit = True
        if worker in self.receivers:  # the kernel closed its sessions: uncount them
            self.sessions.clear(self.receivers.index(worker))
        code = worker.proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if worker.last_words:
            how += f": {worker.last_words}"
        prefix = f"{node_owner(self.config.service.node)}{worker.pid}:"
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
                how=how,
            )
            # Without this worker the service cannot do its job: end it, non-zero (Q151431).
            # Its last words name the thread that failed; without them, how it ended.
            self.fail(f"worker {worker.name} failed ({how})")
            return
        # One that died before it ever reported backs off longer (a structural problem).
        backoff = worker.budget.backoff(structural=worker.heartbeats == 0)
        worker.restarts += 1
        worker.restart_at = now + backoff
        self._tell(
            catalog.WORKER_EXITED, worker, how=how, restarts=worker.restarts, backoff=backoff
        )

    def _tell(self, event: EventType, worker: WorkerProcess, **fields: Any) -> None:
        """An event about `worker`: its name, role and pid, and `fields`."""
        self.events.emit(event, worker=worker.name, role=worker.spec.role, pid=worker.pid, **fields)

    # --- health and stopping -------------------------------------------------------------------
    def health(self) -> list[str]:
        reasons: list[str] = []
        now = time.time()
        for worker in self.workers:
            if worker.failed:
                reasons.append(f"worker {worker.name} failed")
            elif not worker.alive:
                reasons.append(f"worker {worker.name} is not running")
            elif not worker.heartbeats:
                reasons.append(f"worker {worker.name} is starting")
            elif now - worker.last_heard > SILENT:
                reasons.append(f"worker {worker.name} silent for {now - worker.last_heard:.0f}s")
            else:
                reasons += [f"{worker.name}: {r}" for r in worker.status.get("health", [])]
        return reasons

    def summary(self) -> str:
        alive = sum(1 for w in self.workers if w.alive)
        return f"{alive}/{len(self.workers)} workers"

    def listen(self) -> str:
        return self.listen_at

    def halt(self, deadline: float) -> list[str]:
        """SIGTERM every worker; SIGKILL whatever outlives the deadline.

        All at once: processes share nothing but the durable queue, so there is no order
        to keep (receivers answer 421 and stop; interchange finishes or releases work)."""
        self.stopping = True
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
                self.unclean_workers.append(worker.name)
        return left

    def threads(self, phase: Phase) -> list[str]:
        # The watch first (no restart of what is stopping), then the channel, which reads
        # on until every worker is gone.
        return {Phase.INTAKE: ["workers"], Phase.DELIVERY: ["channel"]}.get(phase, [])

    def close(self) -> None:
        if self.listeners is not None:
            self.listeners.close()

    def abort(self) -> None:
        for worker in self.workers:
            worker.kill()

    def unclean(self) -> list[str]:
        return list(self.unclean_workers)


def _hostport(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
