"""A client gone before the greeting frees its session slot at once, on either event loop.

uvloop delivers the client's EOF before the session's task has run its first step; the task,
cancelled then, never closed the connection, and the slot (and /metrics' sessions open)
stayed taken until the idle timeout: a few port scanners filled max_sessions_per_ip."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.kb import metric
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_client_gone_before_the_greeting_frees_its_slot(tmp_path: Path, loop: str) -> None:
    config = DEFAULT_CONFIG + f'\n[processes]\nreceive = 1\n\n[smtp]\nevent_loop = "{loop}"\n'
    mg = Mailgate(tmp_path, config=config)
    admin = free_port()
    mg.start("--admin-listen", f"127.0.0.1:{admin}")
    try:
        for _ in range(5):
            socket.create_connection(("127.0.0.1", mg.port), timeout=5).close()
        with socket.create_connection(("127.0.0.1", mg.port), timeout=5) as sock:
            assert sock.recv(512).startswith(b"220")
        wait_for(
            lambda: metric(admin, "mailgate_smtp_sessions_open") == 0, 10,
            what="every session slot free again",
        )  # fmt: skip
    finally:
        mg.close()
