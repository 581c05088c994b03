"""Reloading the configuration: reading it anew, what can change live, what was last taken.

Nothing a file holds may end the service: `read_new_config` turns every problem into
event 1100 and an answer, and the running configuration stays (Q201120). Only the
routes and the log levels change live; `needs_restart` names the sections that
changed but wait for a restart (event 1101 says which).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailgate.config.schema import Config
from mailgate.errors import ConfigError
from mailgate.observe import catalog
from mailgate.observe.events import EventLog

LIVE = ("route", "log")


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
    wrong with it. load_config turns every problem into a ConfigError; anything else it
    raised is a bug, reported the same way."""
    try:
        return source()
    except ConfigError as exc:
        problems = "; ".join(f"{k}: {r}" for k, r in exc.problems)
    except Exception as exc:
        problems = f"cannot be read: {exc!r}"
    events.emit(catalog.CONFIG_INVALID, source="reload", problems=problems)
    return problems


def needs_restart(old: Config, new: Config) -> list[str]:
    """Sections that changed but only take effect after a restart."""
    return [
        name
        for name in type(old).model_fields
        if name not in LIVE and getattr(old, name) != getattr(new, name)
    ]


def live_part(running: Config, new: Config) -> Config:
    """The running configuration with what may change live taken from `new`."""
    return running.model_copy(update={name: getattr(new, name) for name in LIVE})
