"""`mailgate run` (multi-process): the master's own process.

The master holds the data directory lock, serves control and the admin listener for
the whole service (its surface reads every worker), writes every event (workers send
theirs over their channel) and supervises the worker processes (master.py). It runs
on the same Host as the single-process service; a second stop signal takes the
workers along before it exits.
"""

from __future__ import annotations

from collections.abc import Callable

from mailgate.config.schema import Config
from mailgate.master.master import Master
from mailgate.master.surface import MasterSurface
from mailgate.observe.events import EventLog
from mailgate.service import wiring
from mailgate.service.control import ControlPart
from mailgate.service.hooks import install_excepthooks
from mailgate.service.host import Host
from mailgate.service.processes import node_part
from mailgate.service.signals import Signals


def master_process(
    config: Config, events: EventLog, source: Callable[[], Config] | None = None
) -> Host:
    host = Host(config, events, owner=True, source=source, label="master thread", exit_hard=True)
    master = Master(config, events, host.fail)

    def surface() -> MasterSurface:  # one per thread that reads it
        return MasterSurface(host, master)

    host.parts = [
        ControlPart(config, events, surface),
        master,
        node_part(host, lambda: surface().threads()),
    ]
    return host


def run_master(config: Config, source: Callable[[], Config] | None = None) -> int:
    """Returns the exit status (0 only for a clean stop); leaves with os._exit."""
    events = wiring.open_events(config)
    install_excepthooks(events)
    host = master_process(config, events, source)
    signals = Signals(events, host.request_stop, abort=host.abort)
    signals.install()  # before anything starts: no signal is lost
    return host.run(signals)
