"""`mailgate ctl`: talk to a running service over its control socket."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from mailgate.cli.common import config_options
from mailgate.control.server import request, socket_path


def _data_dir(config_path: Path | None, data_dir: Path | None) -> Path:
    """Where the service runs. Control must work even when the file on disk was broken
    after the service started, so only `service.data_dir` is read from it, leniently."""
    if data_dir is not None:
        return data_dir
    if config_path is not None:
        try:
            # Damaged bytes elsewhere (Q201120) must not hide data_dir: decode leniently.
            with open(config_path, "rb") as f:
                text = f.read(1 << 22).decode("utf-8", "replace")
            value = tomllib.loads(text).get("service", {}).get("data_dir")
            if isinstance(value, str):
                return Path(value)
        except (OSError, ValueError, AttributeError, RecursionError):
            pass
    return Path("./var")


def _call(config_path: Path | None, data_dir: Path | None, command: str, **args: Any) -> Any:
    path = socket_path(_data_dir(config_path, data_dir))
    try:
        return request(path, command, {k: v for k, v in args.items() if v is not None})
    except OSError as exc:
        raise click.ClickException(f"no service answers on {path}: {exc.strerror or exc}") from None
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _print(result: Any, as_json: bool) -> None:
    if as_json or not isinstance(result, dict | list):
        click.echo(json.dumps(result, indent=2, default=str))
    elif isinstance(result, list):
        for item in result:
            click.echo(json.dumps(item, default=str))
    else:
        for key, value in result.items():
            click.echo(f"{key}: {json.dumps(value, default=str)}")


def _threads_table(threads: list[dict[str, Any]]) -> None:
    click.echo(f"{'thread':<16}{'state':<11}{'cpu s':>8}{'tid':>9}  restarts  work")
    for t in threads:
        work = t["work"]
        doing = ""
        if work and work["queue_id"]:
            doing = f"{work['queue_id']} <{work['recipient']}> for {work['age']}s"
        cpu = f"{t['cpu_seconds']:.2f}" if t["cpu_seconds"] is not None else "-"
        click.echo(
            f"{t['name']:<16}{t['state']:<11}{cpu:>8}{t['native_id'] or '-':>9}"
            f"  {t['restarts']:>8}  {doing}"
        )


@click.group()
def ctl() -> None:
    """Control a running service (status, pause, resume, reload, refresh, stop, ...)."""


@ctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_options
def status(as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Service state, health, every thread with state and CPU, queue lengths."""
    result = _call(config_path, data_dir, "status")
    if as_json:
        _print(result, True)
        return
    health = "healthy" if result["healthy"] else "UNHEALTHY: " + "; ".join(result["reasons"])
    click.echo(f"mailgate {result['version']} pid {result['pid']} {result['state']}, {health}")
    click.echo(f"uptime {result['uptime']}s, restarts {result['restarts']}, "
               f"abandoned threads {result['abandoned']}")  # fmt: skip
    config = result.get("config") or {}
    if not config.get("last_reload_ok", True):
        click.echo("configuration: the last reload was REFUSED (event 1100); running on the "
                   "configuration loaded before")  # fmt: skip
    for name, q in result["queues"].items():
        paused = " PAUSED" if q["paused"] else ""
        down = f"; destination DOWN: {q['down']}" if q.get("down") else ""
        click.echo(
            f"queue {name}{paused}: {q['length']} waiting (queued {q['queued']}, active "
            f"{q['active']}, deferred {q['deferred']}, held {q['held']}, quarantined "
            f"{q['quarantined']}), oldest {q['oldest_age']}s, delivered {q['delivered']}; "
            f"{q.get('threads', 0)} threads, {q.get('connections', 0)} connections{down}"
        )
    for node in result.get("nodes") or []:  # every node sharing the queue
        busy = sum(1 for t in node["work"] if (t.get("work") or {}).get("queue_id"))
        click.echo(f"node {node['name']} {node['state'].upper()}: host {node['host']} pid "
                   f"{node['pid']}, heard {node['heartbeat_age']}s ago, {busy} of "
                   f"{len(node['work'])} threads busy")  # fmt: skip
    for process in result["processes"]:
        click.echo(f"process {process['pid']} ({process['role']}):")
        _threads_table(process["threads"])


@ctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_options
def threads(as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Every supervised thread: state, CPU seconds, native id, current work."""
    result = _call(config_path, data_dir, "threads")
    if as_json:
        _print(result, True)
    else:
        _threads_table(result)


def _simple(name: str, help_text: str, with_connector: bool = False) -> None:
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @config_options
    def command(
        as_json: bool, config_path: Path | None, data_dir: Path | None, connector: str | None = None
    ) -> None:
        _print(_call(config_path, data_dir, name, connector=connector), as_json)

    command.__doc__ = help_text
    if with_connector:
        command = click.argument("connector", required=False)(command)
    ctl.command(name)(command)


_simple("pause", "Stop delivery for a connector (all if none is named); receiving goes on.", True)
_simple("resume", "Resume delivery for a connector (all if none is named).", True)
_simple("reload", "Re-read the configuration file; a bad file keeps the running one.")
_simple("refresh", "Recycle every interchange thread now (fresh threads, fresh context).")
_simple(
    "wake",
    "Wake a connector's threads (all if none is named) and make it forget that its "
    "destination was down (`[smarthost] down_for`): what is due is tried at once.",
    True,
)
_simple("stop", "Stop the service (as SIGTERM does).")
_simple("health", "Whether the service is healthy, and why not.")


@ctl.command()
@config_options
def dump(config_path: Path | None, data_dir: Path | None) -> None:
    """Print every thread's current stack."""
    for item in _call(config_path, data_dir, "dump"):
        click.echo(f"--- {item['thread']}\n{item['stack']}")


@ctl.command()
@click.argument("category", required=False)
@click.argument("level", required=False)
@config_options
def loglevel(
    category: str | None, level: str | None, config_path: Path | None, data_dir: Path | None
) -> None:
    """Show levels, or set CATEGORY to LEVEL (none/minimum/medium/maximum), live."""
    result = _call(config_path, data_dir, "loglevel", category=category, level=level)
    for name, value in result.items():
        click.echo(f"{name}: {value}")
    sys.stdout.flush()
