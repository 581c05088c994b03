"""Connector stall watch: due mail, not paused, and no delivery completed for too long.

Pure logic over numbers the scheduler gathers each second, so it is tested with
plain values. A completion is a delivery or a bounce (a final outcome): a hung or
dead destination that only ever defers is a stall, as "Sent" events stopping
while mail waits was in the system we replace. The clock starts when work is
first seen due after the last completion; short gaps with nothing due (between
retries) do not reset it, a full `stall_after` with nothing due does. The
warning repeats every `stall_after` until a completion (or a pause, or a long
empty spell) clears it, then one "recovered" is reported. It is only ever
reported while something is due: "0 recipient(s) due" is never a stall.
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
    seen_completion: float = 0.0
    first_due: float | None = None
    nothing_due_since: float | None = None
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
        reports: list[StallReport] = []
        for name, load in loads.items():
            track = self._tracks.setdefault(name, _Track())
            completed = last_completed.get(name, 0.0)
            if completed > track.seen_completion or name in paused:
                track.seen_completion = max(completed, track.seen_completion)
                track.first_due = None
                self._clear(name, track, load, now, reports)
            if name in paused:
                continue
            if load.due:
                track.nothing_due_since = None
                track.first_due = track.first_due or now
            else:
                track.nothing_due_since = track.nothing_due_since or now
                if now - track.nothing_due_since >= self.stall_after:
                    track.first_due = None
                    self._clear(name, track, load, now, reports)
            if track.first_due is None:
                continue
            quiet = now - max(completed, track.first_due)
            # With nothing due right now (say, stalled threads' work released and deferred
            # again) nothing waits on the connector: the clock runs on, but no warning.
            if (
                load.due
                and quiet > self.stall_after
                and (track.stalled_since is None or now - track.last_warned >= self.stall_after)
            ):
                track.stalled_since = track.stalled_since or now - quiet
                track.last_warned = now
                reports.append(StallReport(name, True, load.due, load.oldest_age, quiet))
        return reports

    @staticmethod
    def _clear(name: str, track: _Track, load: Load, now: float, out: list[StallReport]) -> None:
        if track.stalled_since is not None:
            out.append(
                StallReport(name, False, load.due, load.oldest_age, now - track.stalled_since)
            )
            track.stalled_since = None

    def stalled(self) -> list[str]:
        return [name for name, t in self._tracks.items() if t.stalled_since is not None]
