"""The `mailgate` command: run the service, check configuration, administer postoffices.

A command's module is imported only when the command runs (LAZY), so a command that
reads the event log or the queue does not import the service, the master and every
stage first; `mailgate --help` imports them all to list them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from mailgate import __version__
from mailgate.cli.common import config_loader, config_options, get_config, report_config_error
from mailgate.config import load_config
from mailgate.errors import ConfigError

LAZY = {
    "mailbox": "mailgate.cli.mailbox:mailbox",
    "gen-cert": "mailgate.cli.security:gen_cert",
    "passwd": "mailgate.cli.security:passwd",
    "events": "mailgate.cli.events:events",
    "track": "mailgate.cli.track:track",
    "ctl": "mailgate.cli.ctl:ctl",
    "queue": "mailgate.cli.queue:queue_group",
    "top": "mailgate.cli.top:top",
    "db": "mailgate.cli.db:db_group",
}


class LazyGroup(click.Group):
    """A group whose LAZY commands are imported when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY:
            return super().get_command(ctx, cmd_name)
        module, _, name = LAZY[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command), LAZY[cmd_name]
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailgate")
def cli() -> None:
    """mailgate: a supervised, durable mail connector interchange."""


@cli.command()
@config_options
@click.option("--listen", metavar="HOST:PORT", help="SMTP listener (overrides smtp.listen).")
@click.option("--smarthost", metavar="HOST:PORT", help="Relay non-local mail to this host.")
@click.option(
    "--admin-listen",
    metavar="HOST:PORT",
    help='Admin HTTP listener for /metrics, /healthz, /status (overrides admin.listen; "" '
    "disables it).",
)
@click.option(
    "--single-process",
    is_flag=True,
    help="Run every stage in this one process (tests, small sites) instead of a master "
    "with receive and interchange worker processes.",
)
def run(
    config_path: Path | None,
    data_dir: Path | None,
    listen: str | None,
    smarthost: str | None,
    admin_listen: str | None,
    single_process: bool,
) -> None:
    """Run the service in the foreground until SIGTERM or SIGINT (SIGHUP reloads)."""
    overrides = {"smtp.listen": listen, "admin.listen": admin_listen}
    config = get_config(config_path, data_dir, smarthost=smarthost, **overrides)
    source = config_loader(config_path, data_dir, smarthost=smarthost, **overrides)
    if single_process:
        from mailgate.service.processes import run_single

        sys.exit(run_single(config, source))
    from mailgate.master.run import run_master

    sys.exit(run_master(config, source))


@cli.command(hidden=True)
@click.option("--role", type=click.Choice(["receive", "interchange"]), required=True)
@click.option("--name", required=True)
def worker(role: str, name: str) -> None:
    """A worker process of `mailgate run` (started by the master, not by hand)."""
    from mailgate.master.worker import run_worker

    sys.exit(run_worker(role, name))


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate a configuration file; exit 0 if valid, 1 listing each problem if not."""
    try:
        load_config(file)
    except ConfigError as exc:
        report_config_error(file, exc)
        sys.exit(1)
    click.echo(f"{file}: ok")


@cli.command()
@click.option("--write", is_flag=True, help="Rewrite the generated files.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs"),
    show_default=True,
)
def docs(write: bool, directory: Path) -> None:
    """Check (or --write) docs generated from the code: configuration, events, metrics."""
    from mailgate.config.reference import render_reference
    from mailgate.observe.reference import render_events, render_metrics

    stale = []
    generated = {
        "configuration.md": render_reference(),
        "events.md": render_events(),
        "metrics.md": render_metrics(),
    }
    for name, text in generated.items():
        path = directory / name
        if write:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(str(path))
    if stale:
        click.echo(f"out of date: {', '.join(stale)} (run `mailgate docs --write`)", err=True)
        sys.exit(1)


def main() -> None:
    cli()


__all__ = ["config_options", "get_config", "main"]
