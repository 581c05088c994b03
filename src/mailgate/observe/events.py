"""The event log: catalog events filtered by level and written to every sink.

`EventLog.emit(EVENT, **fields)` never raises: a failing sink is reported by the
logging module's own error handling and the caller goes on. Levels can be
changed while running (`set_level`); a read of the level table is lock-free.
Fields given by remote parties (addresses, HELO names) are escaped in the
human form so a client cannot forge log lines with CR/LF.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mailgate.observe.catalog import DEFAULT_LEVELS, Category, EventType, Level, Severity

_RECORD_KEY = "mailgate_event"


class _SafeFields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _printable(value: object) -> str:
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def render(event: EventType, fields: Mapping[str, Any], *, escape: bool) -> str:
    """The event's message with its fields filled in; unknown placeholders stay visible."""
    values = {
        key: (value if key == "traceback" or not escape else _printable(value))
        for key, value in fields.items()
    }
    return event.template.format_map(_SafeFields(values)).rstrip()


class EventLog:
    """Writes catalog events at or below each category's level to the configured sinks."""

    def __init__(self, levels: Mapping[Category, Level] | None = None) -> None:
        self._levels: dict[Category, Level] = dict(DEFAULT_LEVELS)
        self._levels.update(levels or {})
        self._logger = logging.Logger("mailgate.events", logging.DEBUG)
        self._logger.propagate = False
        self._logger.addHandler(logging.NullHandler())  # no sinks yet: silence, not lastResort

    def add_sink(self, handler: logging.Handler) -> None:
        self._logger.addHandler(handler)

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)

    def set_level(self, category: Category, level: Level) -> None:
        levels = dict(self._levels)
        levels[category] = level
        self._levels = levels  # swapped whole: readers never see a half-updated table

    def level(self, category: Category) -> Level:
        return self._levels[category]

    def enabled(self, event: EventType) -> bool:
        if event.severity in (Severity.ERROR, Severity.CRITICAL):
            return True
        return event.level <= self._levels[event.category]

    def forward(
        self, event: EventType, fields: dict[str, Any], when: float, pid: int, thread: str
    ) -> None:
        """Write an event another process (a worker) emitted, keeping its time and origin."""
        if not self.enabled(event):
            return
        self._handle(event, fields, when, (pid, thread))

    def emit(self, event: EventType, **fields: Any) -> None:
        if not self.enabled(event):
            return
        self._handle(event, fields, time.time(), None)

    def _handle(
        self, event: EventType, fields: dict[str, Any], when: float, origin: tuple[int, str] | None
    ) -> None:
        severity = {
            Severity.INFO: logging.INFO,
            Severity.WARNING: logging.WARNING,
            Severity.ERROR: logging.ERROR,
            Severity.CRITICAL: logging.CRITICAL,
        }[event.severity]
        record = self._logger.makeRecord(
            self._logger.name, severity, "(event)", 0, event.template, (), None
        )
        setattr(record, _RECORD_KEY, (event, fields, when))
        if origin is not None:
            record.process, record.threadName = origin
        self._logger.handle(record)


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per event: time, id, name, category, severity, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields, when = getattr(record, _RECORD_KEY)
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
                + f".{int(when % 1 * 1000):03d}Z",
                "ts": when,
                "id": event.id,
                "name": event.name,
                "category": event.category.value,
                "severity": event.severity.value,
                "level": event.level.name.lower(),
                "message": render(event, fields, escape=False),
                "pid": record.process or os.getpid(),
                "thread": record.threadName,
                "fields": fields,
            },
            default=str,
            ensure_ascii=False,
        )


class HumanFormatter(logging.Formatter):
    """`2026-11-25 14:00:00 warning 2400 Interchange: message`, control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields, when = getattr(record, _RECORD_KEY)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
        text = render(event, fields, escape=True)
        return f"{stamp} {event.severity.value} {event.id} {event.category.value}: {text}"


def open_event_log(
    log_dir: Path,
    *,
    levels: Mapping[Category, Level] | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
    stderr: bool = True,
) -> EventLog:
    """An event log writing JSON lines to `log_dir/events.jsonl` (rotated) and stderr."""
    log = EventLog(levels)
    log_dir.mkdir(parents=True, exist_ok=True)
    file_sink = logging.handlers.RotatingFileHandler(
        log_dir / "events.jsonl", maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    file_sink.setFormatter(JsonLinesFormatter())
    log.add_sink(file_sink)
    if stderr:
        err_sink = logging.StreamHandler(sys.stderr)
        err_sink.setFormatter(HumanFormatter())
        log.add_sink(err_sink)
    return log


def levels_from_config(configured: Mapping[str, str]) -> dict[Category, Level]:
    return {Category(name): Level[value.upper()] for name, value in configured.items()}


def current_thread_name() -> str:
    return threading.current_thread().name
