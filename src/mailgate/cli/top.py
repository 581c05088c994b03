"""`mailgate top`: a live view of a running service, refreshed every second.

Each frame is one `status` answer of the control socket (what `mailgate ctl status
--json` prints): health, the queues with their length and oldest age, every
process and thread with its state and current work. Rates (messages received and
delivered per second) and each thread's % CPU come from the difference between two
successive answers, so the first frame shows "-" for them. When no service answers
the view says so and keeps asking; Ctrl-C ends it. `--once` prints one frame and
exits, 1 if no service answered (for scripts).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mailgate.cli.common import config_options
from mailgate.cli.ctl import _data_dir
from mailgate.cli.top_nodes import nodes_table
from mailgate.control.server import request, socket_path
from mailgate.control.surface import STATES
from mailgate.observe import metrics
from mailgate.web.metrics import parse_key

ANSWER = 2.0
SHORT = {"deferred": "defer", "quarantined": "quar"}
STATE_STYLES = {
    "busy": "yellow",
    "stalled": "bold red",
    "failed": "bold red",
    "abandoned": "red",
    "restarting": "magenta",
    "idle": "dim",
}


class Sampler:
    """Successive status answers, and what changed between the last two."""

    def __init__(self) -> None:
        self.previous: tuple[float, dict[str, Any]] | None = None
        self.current: tuple[float, dict[str, Any]] | None = None

    def add(self, status: dict[str, Any] | None, when: float) -> None:
        if status is None:
            self.previous = self.current = None  # a restarted service starts afresh
            return
        if self.current is not None and self.current[1].get("pid") != status.get("pid"):
            self.current = None  # another service: its counters started from zero
        self.previous, self.current = self.current, (when, status)

    def rate(self, name: str, **match: str) -> float | None:
        if self.previous is None or self.current is None:
            return None
        (t0, s0), (t1, s1) = self.previous, self.current
        if t1 <= t0:
            return None
        return max(0.0, total(s1, name, **match) - total(s0, name, **match)) / (t1 - t0)

    def cpu_percent(self, pid: Any, thread: dict[str, Any]) -> float | None:
        if self.previous is None or self.current is None or thread.get("cpu_seconds") is None:
            return None
        (t0, s0), (t1, _) = self.previous, self.current
        key = (pid, thread.get("name"), thread.get("native_id"))
        before = _cpu_by_thread(s0).get(key)
        if before is None or t1 <= t0:
            return None
        return max(0.0, float(thread["cpu_seconds"]) - before) / (t1 - t0) * 100


def total(status: dict[str, Any], name: str, **match: str) -> float:
    """The sum of counter `name` over the series whose labels include `match`."""
    result = 0.0
    for key, value in ((status.get("counters") or {}).get("counters") or {}).items():
        base, labels = parse_key(key)
        if base == name and all(labels.get(k) == v for k, v in match.items()):
            result += float(value)
    return result


def _cpu_by_thread(status: dict[str, Any]) -> dict[tuple[Any, Any, Any], float]:
    return {
        (process.get("pid"), thread.get("name"), thread.get("native_id")): float(
            thread["cpu_seconds"]
        )
        for process in status.get("processes") or []
        for thread in process.get("threads") or []
        if thread.get("cpu_seconds") is not None
    }


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def _per_second(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def frame(
    sampler: Sampler, where: Path, error: str | None = None, *, live: bool = False
) -> RenderableType:
    """One screen: the latest answer, or why there is none."""
    stamp = time.strftime("%H:%M:%S")
    if sampler.current is None:
        return Group(
            Text(f"mailgate top  {stamp}", style="bold"),
            Text(f"no service answering on {where}: {error or 'no answer'}", style="bold red"),
            Text("(still trying; Ctrl-C to quit)" if live else "", style="dim"),
        )
    status = sampler.current[1]
    return Group(
        _header(status, stamp),
        _rates(sampler, status),
        _queues(status),
        nodes_table(status, age),
        _threads(sampler, status),
    )


def _header(status: dict[str, Any], stamp: str) -> RenderableType:
    healthy = bool(status.get("healthy"))
    line = Text()
    line.append(f"mailgate {status.get('version', '?')}", style="bold")
    line.append(f"  pid {status.get('pid')} {status.get('state')}")
    line.append(f"  up {age(status.get('uptime'))}  {stamp}  ")
    if healthy:
        line.append("HEALTHY", style="bold green")
    else:
        line.append("UNHEALTHY", style="bold red")
    line.append(f"  restarts {status.get('restarts', 0)}")
    if status.get("abandoned"):
        line.append(f"  abandoned threads {status['abandoned']}", style="red")
    reasons = [Text(f"  ! {reason}", style="red") for reason in status.get("reasons") or []]
    return Group(line, *reasons)


def _rates(sampler: Sampler, status: dict[str, Any]) -> RenderableType:
    attempts, received = metrics.ATTEMPTS.name, metrics.MESSAGES_RECEIVED.name
    parts = [
        ("received", sampler.rate(received), total(status, received)),
        ("delivered", sampler.rate(attempts, outcome="delivered"),
         total(status, attempts, outcome="delivered")),
        ("deferred", sampler.rate(attempts, outcome="deferred"),
         total(status, attempts, outcome="deferred")),
        ("bounced", sampler.rate(attempts, outcome="bounced"),
         total(status, attempts, outcome="bounced")),
    ]  # fmt: skip
    line = Text()
    for name, rate, count in parts:
        line.append(f"{name} ", style="bold")
        line.append(f"{_per_second(rate)} ({int(count)})  ")
    gauges = (status.get("counters") or {}).get("gauges") or {}
    line.append("sessions ", style="bold")
    line.append(str(int(gauges.get(metrics.SMTP_SESSIONS_OPEN.name, 0))))
    return line


def _queues(status: dict[str, Any]) -> RenderableType:
    table = Table(title="queues", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("connector", no_wrap=True)
    table.add_column("length", justify="right")
    for state in STATES:
        table.add_column(SHORT.get(state, state), justify="right")
    table.add_column("oldest", justify="right")
    table.add_column("sent", justify="right")
    table.add_column("thr", justify="right")
    table.add_column("conn", justify="right")
    for name, queue in (status.get("queues") or {}).items():
        label = Text(name)
        if queue.get("paused"):
            label.append(" PAUSED", style="bold yellow")
        if queue.get("down"):
            label.append(" DOWN", style="bold red")
        table.add_row(
            label,
            str(queue.get("length", 0)),
            *(str(queue.get(state, 0)) for state in STATES),
            age(queue.get("oldest_age")) if queue.get("length") else "-",
            str(queue.get("delivered", 0)),
            str(queue.get("threads", 0)),
            str(queue.get("connections", 0)),
        )
    return table


def _threads(sampler: Sampler, status: dict[str, Any]) -> RenderableType:
    table = Table(title="threads", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for name in ("process", "thread", "state", "%cpu", "cpu s", "restarts", "work"):
        right = name in ("%cpu", "cpu s", "restarts")
        table.add_column(name, justify="right" if right else "left", no_wrap=name != "work")
    for process in status.get("processes") or []:
        pname = f"{process.get('name') or process.get('role')} {process.get('pid') or ''}"
        if process.get("alive") is False:
            table.add_row(pname, "-", Text("down", style="red"))
            continue
        for n, thread in enumerate(process.get("threads") or []):
            percent = sampler.cpu_percent(process.get("pid"), thread)
            cpu = thread.get("cpu_seconds")
            state = str(thread.get("state"))
            table.add_row(
                pname if n == 0 else "",
                str(thread.get("name")),
                Text(state, style=STATE_STYLES.get(state, "")),
                "-" if percent is None else f"{percent:.0f}",
                "-" if cpu is None else f"{cpu:.1f}",
                str(thread.get("restarts", 0)),
                _work(thread.get("work")),
            )
    return table


def _work(work: dict[str, Any] | None) -> str:
    if not work or not work.get("queue_id"):
        return ""
    what = str(work["queue_id"])
    if work.get("recipient"):
        what += f" <{work['recipient']}>"
    return f"{what} for {age(work.get('age'))}"


def fetch(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The service's status, or None and why not."""
    try:
        result = request(path, "status", timeout=ANSWER)
    except (OSError, RuntimeError, ValueError) as exc:
        return None, getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return (result, None) if isinstance(result, dict) else (None, "unexpected answer")


@click.command()
@click.option("--once", is_flag=True, help="Print one frame and exit (1 if no service answers).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between frames.",
)
@config_options
def top(once: bool, interval: float, config_path: Path | None, data_dir: Path | None) -> None:
    """Live view of a running service: health, rates, queues, threads with % CPU."""
    path = socket_path(_data_dir(config_path, data_dir))
    console = Console()
    sampler = Sampler()
    if once:
        status, error = fetch(path)
        sampler.add(status, time.monotonic())
        console.print(frame(sampler, path, error))
        sys.exit(0 if status is not None else 1)
    try:
        with Live(console=console, auto_refresh=False, screen=True) as live:
            while True:
                status, error = fetch(path)
                sampler.add(status, time.monotonic())
                live.update(frame(sampler, path, error, live=True), refresh=True)
                time.sleep(interval)  # the refresh cadence, not a synchronisation
    except KeyboardInterrupt:
        pass
