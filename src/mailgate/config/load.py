"""Loading the configuration: TOML file, then command-line overrides, then validation.

Every problem is reported as (dotted key path, reason), e.g.
`smtp.max_recipients: Input should be greater than or equal to 1`, and the
service refuses to start with an invalid file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mailgate.config.schema import Config, parse_hostport
from mailgate.errors import ConfigError


def _dotted(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "json-or-python", "lax-or-strict")):
            continue  # pydantic's internal validator names, not keys
        elif part == "[key]":
            continue  # the key itself is wrong: the path already ends with it
        else:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def _reason(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    msg = str(error["msg"])
    if error["loc"] and error["loc"][-1] == "[key]":
        return "unknown key; " + msg.replace("Input should be", "it should be", 1)
    return msg.removeprefix("Value error, ")


def parse_config(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Config:
    """Validate a configuration mapping; `overrides` are dotted keys set by flags."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError([(section, "must be a table")])
        target[key] = value
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        problems = [(_dotted(tuple(e["loc"])), _reason(e)) for e in exc.errors()]
        raise ConfigError(problems) from None


def with_smarthost(data: Mapping[str, Any], hostport: str) -> dict[str, Any]:
    """`--smarthost HOST:PORT`: relay every non-local domain to that host."""
    host, port = parse_hostport(hostport)
    merged = dict(data)
    merged["smarthost"] = {**dict(data.get("smarthost", {})), "host": host, "port": port}
    routes = list(data.get("route", []))
    if routes and not any(r.get("connector") == "smarthost" for r in routes):
        merged["route"] = [*routes, {"match": "*", "connector": "smarthost"}]
    return merged


def load_config(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    smarthost: str | None = None,
) -> Config:
    """Read and validate `path` (built-in defaults when None) with `overrides` applied."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError([(str(path), f"cannot read: {exc.strerror}")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([(str(path), f"not valid TOML: {exc}")]) from None
    if smarthost is not None:
        try:
            data = with_smarthost(data, smarthost)
        except ValueError as exc:
            raise ConfigError([("--smarthost", str(exc))]) from None
    return parse_config(data, overrides)
