"""`mailgate top` against a real service: in a pseudo-terminal (live frames, the service going
away, Ctrl-C) and with --once."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.load import send_many
from tests.support.process import Mailgate, wait_for

ALICE = "alice@po1.net1.example.test"
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Mailgate]:
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.start("--admin-listen", "")
    try:
        yield mg
    finally:
        mg.close()


class Terminal:
    """A program on a pseudo-terminal of 160x60, as a person would run it."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
        self.proc = subprocess.Popen(
            command, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            env={**env, "TERM": "xterm-256color"}, preexec_fn=_controlling_terminal,
        )  # fmt: skip
        os.close(slave)
        self.output = ""

    def read(self, timeout: float = 0.2) -> str:
        """What arrived so far, control sequences removed."""
        while select.select([self.master], [], [], timeout)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the program ended
                break
            if not data:
                break
            self.output += ANSI.sub("", data.decode(errors="replace"))
            timeout = 0.05
        return self.output

    def wait_for_text(self, *texts: str, timeout: float = 20.0) -> str:
        start = len(self.output)
        return wait_for(  # type: ignore[no-any-return]
            lambda: all(t in self.read()[start:] for t in texts) and self.output[start:],
            timeout,
            0.05,
            f"{texts} on the screen",
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.master)


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # so that Ctrl-C typed on it is SIGINT


def test_top_live_shows_threads_queues_and_rates_then_survives_the_service(
    service: Mailgate,
) -> None:
    where = ["--config", str(service.config_path), "--data-dir", str(service.data_dir)]
    term = Terminal(service.command("top", *where), service.env)
    try:
        screen = term.wait_for_text("postoffice-1", "postoffice-2", "interchange-1", "HEALTHY")
        assert "postoffice" in screen and "queues" in screen and "threads" in screen
        assert "smtp" in screen and "scheduler" in screen
        send_many(service.port, 20, ALICE, clients=2)
        wait_for(lambda: len(service.delivered("NET1", "PO1", "ALICE")) == 20, 20, what="mail")
        term.wait_for_text("received", "(20)", "delivered")  # the totals moved
        assert re.search(r"delivered \d+\.\d/s", term.output), "a rate once two frames came"
        assert service.stop() == 0
        term.wait_for_text("no service answering")
        assert term.proc.poll() is None, "top keeps running while no service answers"
        os.write(term.master, b"\x03")  # Ctrl-C
        assert term.proc.wait(10) == 0
        assert "Traceback" not in term.read()
    finally:
        term.close()


def test_top_exits_on_sigint_while_waiting_for_a_service(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    term = Terminal(mg.command("top", "--data-dir", str(mg.data_dir)), mg.env)
    try:
        term.wait_for_text("no service answering")
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(10) == 0
    finally:
        term.close()


def test_top_once_prints_one_frame(service: Mailgate) -> None:
    def frame() -> str | None:
        result = service.cli("top", "--once")
        assert result.returncode == 0, result.stderr
        return result.stdout if "postoffice-2" in result.stdout else None

    out = wait_for(frame, 15, 0.2, "a frame with every worker's threads")
    for text in ("HEALTHY", "postoffice", "postoffice-1", "interchange-1", "receive-1", "master"):
        assert text in out, f"{text!r} missing from:\n{out}"
    assert "\x1b[" not in out, "no control sequences when the output is not a terminal"


def test_top_once_without_a_service(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    began = time.monotonic()
    result = mg.cli("top", "--once")
    assert result.returncode == 1
    assert "no service answering" in result.stdout
    assert time.monotonic() - began < 20
