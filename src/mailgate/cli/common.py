"""Options and helpers shared by every `mailgate` command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mailgate.config import load_config
from mailgate.config.schema import Config
from mailgate.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def config_options(func: F) -> F:
    """--config FILE and --data-dir DIR, accepted by every command."""
    func = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data directory (default: the config's service.data_dir, else ./var).",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="MAILGATE_CONFIG",
        default=None,
        help="TOML configuration file (default: built-in defaults).",
    )(func)
    return func


def get_config(
    config_path: Path | None,
    data_dir: Path | None,
    *,
    smarthost: str | None = None,
    **overrides: Any,
) -> Config:
    """Load the configuration or exit with status 2 listing every problem."""
    try:
        return config_loader(config_path, data_dir, smarthost=smarthost, **overrides)()
    except ConfigError as exc:
        report_config_error(config_path, exc)
        raise SystemExit(2) from None


def config_loader(
    config_path: Path | None,
    data_dir: Path | None,
    *,
    smarthost: str | None = None,
    **overrides: Any,
) -> Callable[[], Config]:
    """A function that (re)loads the configuration as these options ask; raises ConfigError."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["service.data_dir"] = str(data_dir)
    return lambda: load_config(config_path, values, smarthost=smarthost)


def report_config_error(path: Path | None, exc: ConfigError) -> None:
    click.echo(f"mailgate: configuration {path or '(built-in)'} is invalid:", err=True)
    for key, reason in exc.problems:
        click.echo(f"  {key}: {reason}", err=True)


def echo_json(value: Any) -> None:
    """Print `value` as indented JSON (what --json prints); non-JSON values as strings."""
    click.echo(json.dumps(value, ensure_ascii=False, default=str, indent=2))
