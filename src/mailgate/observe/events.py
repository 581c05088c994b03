"""The event log: catalog events filtered by level and written to every sink.

`EventLog.emit(EVENT, **fields)` never raises: a failing sink is reported by the
logging module's own error handling and the caller goes on. Levels can be
changed while running (`set_level`); a read of the level table is lock-free.
Fields given by remote parties (addresses, HELO names) are escaped in the
human form so a client cannot forge log lines with CR/LF. The optional syslog
sink sends RFC 5424 lines (facility mail); its socket has a short timeout, so a
syslog server that stops reading delays an event by at most that, never wedges.
The file and stderr sinks write each event at once; inside `EventLog.batch()` (the master
forwarding what one read from a worker carried) they write the batch's events with one
system call each, at the end of the batch.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
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

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Within it, the stream sinks (file, stderr) hold what they write and write it once,
        when the batch ends, instead of once per event: for the master's channel thread,
        which forwards the events one worker's read carried (two system calls per event,
        two events per delivered message, issue 14). Events other threads emit meanwhile
        wait with them. Not nested."""
        held = [h for h in self._logger.handlers if isinstance(h, _HeldFlush)]
        for handler in held:
            handler.held = True
        try:
            yield
        finally:
            for handler in held:
                handler.held = False
                handler.flush()

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
        record = _EventRecord(self._logger.name, event, fields, when, origin)
        self._logger.handle(record)


_LEVEL = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}


class _EventRecord(logging.LogRecord):
    """The record of one event: every attribute a LogRecord has, filled in without
    LogRecord's per-record look-ups (module from a path, the multiprocessing process name,
    the asyncio task), for one is built per event: per message received, on the SMTP
    thread in a worker and again in the master. `origin`: (pid, thread) of a forwarded
    event, else this process and thread."""

    def __init__(
        self,
        name: str,
        event: EventType,
        fields: dict[str, Any],
        when: float,
        origin: tuple[int, str] | None,
    ) -> None:
        level = _LEVEL[event.severity]
        self.name, self.msg, self.args = name, event.template, ()
        self.levelname, self.levelno = logging.getLevelName(level), level
        self.pathname = self.filename = self.module = "(event)"
        self.exc_info = self.exc_text = self.stack_info = None
        self.funcName = "(event)"
        self.lineno = 0
        self.created = when
        self.msecs = int((when - int(when)) * 1000) + 0.0
        self.relativeCreated = (when - _STARTED) * 1000
        self.thread = threading.get_ident()
        self.processName = "MainProcess"
        self.taskName = None
        if origin is None:
            self.process, self.threadName = os.getpid(), threading.current_thread().name
        else:
            self.process, self.threadName = origin
        setattr(self, _RECORD_KEY, (event, fields, when))


_STARTED = time.time()


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per event: time, id, name, category, severity, message, fields."""

    # One encoder for every record (json.dumps with options builds one per call), and
    # what an event type always writes the same, looked up once per type: the master
    # formats an event per message received (issue 14).
    _encoder = json.JSONEncoder(default=str, ensure_ascii=False)

    def __init__(self) -> None:
        super().__init__()
        self._kinds: dict[int, tuple[str, str, str]] = {}
        self._second = (-1, "")  # the last second formatted, as text

    def format(self, record: logging.LogRecord) -> str:
        event, fields, when = getattr(record, _RECORD_KEY)
        kind = self._kinds.get(event.id)
        if kind is None:
            kind = (event.category.value, event.severity.value, event.level.name.lower())
            self._kinds[event.id] = kind
        second, stamp = int(when // 1), self._second
        if stamp[0] != second:  # a tuple swapped whole: a formatter may be shared
            stamp = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return self._encoder.encode(
            {
                "time": f"{stamp[1]}.{int(when % 1 * 1000):03d}Z",
                "ts": when,
                "id": event.id,
                "name": event.name,
                "category": kind[0],
                "severity": kind[1],
                "level": kind[2],
                "message": render(event, fields, escape=False),
                "pid": record.process or os.getpid(),
                "thread": record.threadName,
                "fields": fields,
            }
        )


class HumanFormatter(logging.Formatter):
    """`2026-11-25 14:00:00 warning 2400 Interchange: message`, control characters escaped."""

    def __init__(self) -> None:
        super().__init__()
        self._second = (-1, "")  # the last second formatted, as text

    def format(self, record: logging.LogRecord) -> str:
        event, fields, when = getattr(record, _RECORD_KEY)
        second, last = int(when // 1), self._second
        if last[0] != second:  # a tuple swapped whole: a formatter may be shared
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = (second, stamp)
        else:
            stamp = last[1]
        text = render(event, fields, escape=True)
        return f"{stamp} {event.severity.value} {event.id} {event.category.value}: {text}"


SYSLOG_MAX_MESSAGE = 16 * 1024  # well under a datagram's limit; the JSON log keeps it whole
SYSLOG_TIMEOUT = 1.0
SYSLOG_ERROR_EVERY = 60.0


class Rfc5424Formatter(logging.Formatter):
    """`<PRI>1 TIMESTAMP HOSTNAME mailgate PID EVENTID - MSG` without the PRI (the handler
    adds it). The message is escaped onto one line: stacks keep their line breaks as `\\n`."""

    def __init__(self, hostname: str | None = None) -> None:
        super().__init__()
        self.hostname = (hostname or socket.gethostname() or "-").split()[0]

    def format(self, record: logging.LogRecord) -> str:
        event, fields, when = getattr(record, _RECORD_KEY)
        stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")
        text = render(event, fields, escape=True).replace("\r", "\\r").replace("\n", "\\n")
        if len(text) > SYSLOG_MAX_MESSAGE:
            text = text[:SYSLOG_MAX_MESSAGE] + "...(truncated)"
        pid = record.process or os.getpid()
        stamp = stamp.replace("+00:00", "Z")
        return f"1 {stamp} {self.hostname} mailgate {pid} {event.id} - {text}"


_SYSLOG_SEVERITY = {Severity.INFO: 6, Severity.WARNING: 4, Severity.ERROR: 3, Severity.CRITICAL: 2}


class SyslogSink(logging.handlers.SysLogHandler):
    """A SysLogHandler for RFC 5424: PRI from the event's severity, no trailing NUL, octet
    counting on TCP (RFC 6587), sockets with a timeout, reconnection after a failure, and
    at most one complaint a minute on stderr while the syslog server is unreachable."""

    append_nul = False

    def __init__(self, target: str, hostname: str | None = None) -> None:
        address: str | tuple[str, int]
        socktype: socket.SocketKind | None = None
        if target.startswith("/"):
            address = target
        else:
            kind, _, hostport = target.partition(":")
            host, _, port = hostport.rpartition(":")
            address = (host.strip("[]"), int(port))
            socktype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
        self._complained = 0.0
        super().__init__(address, self.LOG_MAIL, socktype)
        self.setFormatter(Rfc5424Formatter(hostname))

    def createSocket(self) -> None:
        """Connect (TCP: within the timeout, not the kernel's minutes); on failure leave no
        socket, so the next event tries again."""
        self.socket = None
        try:
            if isinstance(self.address, tuple) and self.socktype == socket.SOCK_STREAM:
                self.unixsocket = False
                self.socket = socket.create_connection(self.address, timeout=SYSLOG_TIMEOUT)
            else:
                super().createSocket()  # a Unix socket it failed to connect is left closed
        except OSError:
            self.socket = None
        if self.socket is not None and self.socket.fileno() == -1:
            self.socket = None
        if self.socket is not None:
            self.socket.settimeout(SYSLOG_TIMEOUT)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = getattr(record, _RECORD_KEY)[0]
            pri = (self.facility << 3) | _SYSLOG_SEVERITY.get(event.severity, 6)
            data = f"<{pri}>{self.format(record)}".encode()
            if not self.unixsocket and self.socktype == socket.SOCK_STREAM:
                data = f"{len(data)} ".encode() + data  # octet counting
            self._send(data)
        except Exception:
            self.handleError(record)

    def _send(self, data: bytes) -> None:
        for attempt in (1, 2):  # a server that restarted gets one reconnection
            try:
                if self.socket is None:
                    self.createSocket()
                    if self.socket is None:
                        raise OSError(f"cannot reach syslog at {self.address}")
                if self.unixsocket or self.socktype == socket.SOCK_STREAM:
                    self.socket.sendall(data)
                else:
                    self.socket.sendto(data, self.address)
                return
            except OSError:
                if self.socket is not None:
                    self.socket.close()
                    self.socket = None
                if attempt == 2:
                    raise

    def handleError(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if not self._complained or now - self._complained >= SYSLOG_ERROR_EVERY:
            self._complained = now
            error = sys.exc_info()[1]
            print(f"mailgate: syslog sink {self.address}: {error!r}", file=sys.stderr)


class _HeldFlush(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream sink whose flush waits while `held` (EventLog.batch)."""

    held = False

    def flush(self) -> None:
        if not self.held:
            super().flush()


class _Stderr(_HeldFlush):
    """The human-readable sink on standard error."""


class _RotatingFile(_HeldFlush, logging.handlers.RotatingFileHandler):
    """The standard rotating file, made cheaper per record: the standard one formats each
    record twice (once to predict the size) and stats the file twice; asking the stream
    its position instead flushed it. Here the file's size is counted as records are
    formatted (from the file's size when it is opened), and the file rotates once it has
    reached max_bytes, one record late at most."""

    _size = -1  # bytes in the open file; -1: not known yet

    def shouldRollover(self, record: logging.LogRecord) -> int:
        if self.stream is None:
            self.stream = self._open()
            self._size = -1
        if self._size < 0:
            self.stream.flush()
            self._size = os.fstat(self.stream.fileno()).st_size
        return int(self.maxBytes > 0 and self._size >= self.maxBytes)

    def doRollover(self) -> None:
        super().doRollover()
        self._size = -1

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self._size >= 0:
            self._size += (len(text) if text.isascii() else len(text.encode())) + 1
        return text


def open_event_log(
    log_dir: Path,
    *,
    levels: Mapping[Category, Level] | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
    stderr: bool = True,
    syslog: str = "",
) -> EventLog:
    """An event log writing JSON lines to `log_dir/events.jsonl` (rotated), stderr and
    syslog (`syslog`: "/dev/log", "udp:HOST:PORT" or "tcp:HOST:PORT"; empty: none)."""
    log = EventLog(levels)
    log_dir.mkdir(parents=True, exist_ok=True)
    file_sink = _RotatingFile(
        log_dir / "events.jsonl", maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    file_sink.setFormatter(JsonLinesFormatter())
    log.add_sink(file_sink)
    if stderr:
        err_sink = _Stderr(sys.stderr)
        err_sink.setFormatter(HumanFormatter())
        log.add_sink(err_sink)
    if syslog:
        log.add_sink(SyslogSink(syslog))
    return log


def levels_from_config(configured: Mapping[Any, str]) -> dict[Category, Level]:
    """[log] levels (category names to level names, as the schema's Literals) as enums."""
    return {Category(name): Level[value.upper()] for name, value in configured.items()}


def current_thread_name() -> str:
    return threading.current_thread().name
