"""Loading the configuration: TOML file, then command-line overrides, then validation.

Every problem is reported as (dotted key path, reason), e.g.
`smtp.max_recipients: Input should be greater than or equal to 1`, and the
service refuses to start with an invalid file. Whatever the bytes in the file
(not UTF-8, NUL, nesting deep enough to exhaust the parser, a huge file), the
only error that leaves `load_config` is ConfigError naming the file and the line
and column, so a bad reload can keep the running configuration (Q201120).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mailgate.config.schema import Config, parse_hostport
from mailgate.errors import ConfigError

MAX_FILE_SIZE = 4 << 20  # no configuration is this big; refuse rather than read it all


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML table in `path`; ConfigError naming the file and position otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError([(str(path), f"larger than {MAX_FILE_SIZE} bytes: not a configuration")])
    try:
        text = raw.decode("utf-8")  # TOML is UTF-8 (tomllib.load would raise UnicodeDecodeError)
    except UnicodeDecodeError as exc:
        line, column = _position(raw, exc.start)
        byte = raw[exc.start]
        where = f"line {line}, column {column} (byte 0x{byte:02x})"
        raise ConfigError([(str(path), f"not valid UTF-8 at {where}")]) from None
    try:
        data = tomllib.loads(text)
        nul = _find_nul(data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(path), f"not valid TOML: {exc}")]) from None
    except RecursionError:
        raise ConfigError([(str(path), "not valid TOML: nested too deeply")]) from None
    if nul is not None:
        raise ConfigError([(nul, "contains a NUL character")])
    return data


def _position(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of `offset` in `raw`."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _find_nul(value: Any, key: str = "") -> str | None:
    """The dotted key of the first string holding NUL (no path or name may hold one)."""
    if isinstance(value, str):
        return (key or "(top level)") if "\x00" in value else None
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = [
            (f"{key}.{k}" if key else str(k), v) for k, v in value.items()
        ]
        items += [(key or "(top level)", k) for k in value]  # keys themselves
    elif isinstance(value, list):
        items = [(f"{key}[{n}]", v) for n, v in enumerate(value)]
    else:
        return None
    for sub, item in items:
        found = _find_nul(item, sub)
        if found is not None:
            return found
    return None


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
        problems = [p for e in exc.errors() for p in _problems(e)]
        raise ConfigError(problems) from None


_KEYED = re.compile(r"([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*): (.+)")


def _problems(error: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, reason) of one pydantic error. A check of a whole table or across sections
    (config/connectors.py) names its keys itself, one "KEY: reason" per line, KEY relative
    to where the error is: those keys are used."""
    where, reason = _dotted(tuple(error["loc"])), _reason(error)
    keyed = [_KEYED.fullmatch(line) for line in reason.split("\n")]
    if not all(keyed):
        return [(where, reason)]
    top = where == "(top level)"
    return [(m.group(1) if top else f"{where}.{m.group(1)}", m.group(2)) for m in keyed if m]


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
    data = read_toml(path) if path is not None else {}
    if smarthost is not None:
        try:
            data = with_smarthost(data, smarthost)
        except ValueError as exc:
            raise ConfigError([("--smarthost", str(exc))]) from None
    return parse_config(data, overrides)
