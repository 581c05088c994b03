"""A worker process: one role of the service under a master (`mailgate worker`, internal).

Builds the process of its role (service/processes.py) on a Host with a channel part,
sends its events and a heartbeat to the master over stdout, takes commands on stdin,
and stops when told (SIGTERM) or when stdin closes. Whatever ends it early (a failed
start, a failed critical thread) is said in event 5020, written from the exiting
thread itself before it exits, so the reason reaches the master even when no channel
thread runs yet (Q151431). It asks the kernel to kill it if the master dies
(PR_SET_PDEATHSIG), so a master killed with SIGKILL never leaves orphans serving the
port.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import traceback
from pathlib import Path

from mailgate.config.schema import Config
from mailgate.master.channel import ChannelPart, ForwardSink, Outbox
from mailgate.master.processes import WORKER_CONFIG, WORKER_SOCKETS
from mailgate.observe import catalog
from mailgate.observe.events import EventLog, levels_from_config
from mailgate.receive.listeners import Listeners
from mailgate.service.hooks import install_excepthooks
from mailgate.service.processes import WORKERS, local_surface
from mailgate.service.signals import worker_signals

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: deliver SIGKILL to this process when its parent thread exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: stdin EOF still stops the worker
    if os.getppid() == 1:
        os._exit(1)  # the master died before we could ask


def run_worker(role: str, name: str) -> int:
    """Entry of `mailgate worker`: the configuration comes validated from the master."""
    config = Config.model_validate_json(Path(os.environ[WORKER_CONFIG]).read_bytes())
    return _run(config, role, name)


def _run(config: Config, role: str, name: str) -> int:
    die_with_parent()
    outbox = Outbox()
    events = EventLog(levels_from_config(config.log.levels))
    events.add_sink(ForwardSink(outbox, name))
    install_excepthooks(events)
    try:
        return _serve(config, role, name, events, outbox)
    except BaseException as exc:  # its start failed, most likely: say why, then go (Q151431)
        _last_words(events, outbox, name, role, f"{type(exc).__name__}: {exc}", exc)
        os._exit(1)


def _last_words(
    events: EventLog,
    outbox: Outbox,
    name: str,
    role: str,
    reason: str,
    exc: BaseException | None = None,
) -> None:
    """Event 5020 with the reason, sent from this thread: no channel thread may be left."""
    trace = "".join(traceback.format_exception(exc)) if exc is not None else ""
    events.emit(
        catalog.WORKER_EXITING,
        worker=name,
        role=role,
        pid=os.getpid(),
        reason=reason,
        **({"traceback": trace} if trace else {}),
    )
    outbox.drain()


def _serve(config: Config, role: str, name: str, events: EventLog, outbox: Outbox) -> int:
    # A receive worker accepts on the sockets its master opened: it never binds a port.
    inherited = os.environ.get(WORKER_SOCKETS)
    listeners = Listeners.inherited(json.loads(inherited)) if inherited else None
    host = WORKERS[role](config, events, listeners)  # reloads come validated from the master
    host.parts.append(ChannelPart(outbox, local_surface(host, role), role, host.request_stop))
    worker_signals(host.request_stop)
    host.start()
    host.serve()
    left = host.stop()
    if host.failure:  # a critical thread failed: the master must hear which
        _last_words(events, outbox, name, role, host.failure)
    outbox.drain()  # the last events (which threads did not stop) must reach the master
    code = 1 if (left or host.failure) else 0
    os._exit(code)  # threads left wedged must not keep the process alive
