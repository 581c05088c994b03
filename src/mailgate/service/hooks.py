"""Process-wide hooks: no exception may end a thread or the process without an event.

Also silences aiosmtpd's own logger: at INFO it would log every command line, AUTH
credentials included; our events say what matters, without secrets.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType

from mailgate.observe import catalog
from mailgate.observe.events import EventLog


def install_excepthooks(events: EventLog) -> None:
    mail_log = logging.getLogger("mail.log")
    mail_log.addHandler(logging.NullHandler())
    mail_log.propagate = False
    mail_log.setLevel(logging.ERROR)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        exc = args.exc_value or RuntimeError("unknown")
        events.emit(
            catalog.UNHANDLED_EXCEPTION,
            where=f"thread {args.thread.name if args.thread else '?'}",
            error=repr(exc),
            traceback="".join(traceback.format_exception(exc)),
        )

    def main_hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        events.emit(
            catalog.UNHANDLED_EXCEPTION,
            where="main thread",
            error=repr(exc),
            traceback="".join(traceback.format_exception(kind, exc, tb)),
        )

    threading.excepthook = thread_hook
    sys.excepthook = main_hook
