"""Durations ("30s", "2m", "1h30m", "5d") and sizes ("10MiB", "512k") as config values.

A bare number is seconds or bytes. Anything else is refused with a reason that the
loader reports against the key's dotted path.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "90s", "2m", "1h30m", "500ms"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s' or '2m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration like '30s' or '2m'")
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos or match.group(2) not in _DURATION_UNITS:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    else:
        if pos == len(text) and text:
            return total
    raise ValueError(f"{value!r} is not a duration (use e.g. '30s', '2m', '1h30m', '5d')")


def parse_size(value: object) -> int:
    """Bytes from a number or a string like "10MiB", "512k", "2GB"."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '10MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size like '10MiB'")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size (use e.g. '10MiB', '512k', 1048576)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for messages and docs."""
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
