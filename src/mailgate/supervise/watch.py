"""Connector stall watch: due mail, not paused, and no attempt completed for too long.

Pure logic over numbers the scheduler gathers each second, so it is tested with
plain values. A connector is stalled when it has had due recipients and no
completed attempt for `stall_after` seconds (measured from the later of its last
completion and the moment work became due). The warning repeats every
`stall_after` until it clears, then one "recovered" is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Load:
    due: int
    oldest_age: float


@dataclass(frozen=True, slots=True)
class StallReport:
    connector: str
    stalled: bool  # False: this reports recovery
    due: int
    oldest_age: float
    seconds: float


@dataclass
class _Track:
    due_since: float | None = None
    stalled_since: float | None = None
    last_warned: float = 0.0


@dataclass
class ConnectorWatch:
    stall_after: float
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def check(
        self,
        now: float,
        loads: dict[str, Load],
        last_completed: dict[str, float],
        paused: set[str],
    ) -> list[StallReport]:
        reports = []
        for name, load in loads.items():
            track = self._tracks.setdefault(name, _Track())
            if load.due == 0 or name in paused:
                track.due_since = None
            elif track.due_since is None:
                track.due_since = now
            quiet_since = max(last_completed.get(name, 0.0), track.due_since or now)
            stalled = track.due_since is not None and now - quiet_since > self.stall_after
            if stalled:
                if track.stalled_since is None or now - track.last_warned >= self.stall_after:
                    track.stalled_since = track.stalled_since or quiet_since
                    track.last_warned = now
                    reports.append(
                        StallReport(name, True, load.due, load.oldest_age, now - quiet_since)
                    )
            elif track.stalled_since is not None:
                reports.append(
                    StallReport(name, False, load.due, load.oldest_age, now - track.stalled_since)
                )
                track.stalled_since = None
        return reports

    def stalled(self) -> list[str]:
        return [name for name, t in self._tracks.items() if t.stalled_since is not None]
