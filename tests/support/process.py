"""A real `mailgate run` subprocess on a loopback port, for end-to-end tests.

Nothing is faked: the service is started as a user would start it, talked to over
SMTP on 127.0.0.1, killed with real signals, and inspected through its files
(events.jsonl, the Maildirs). Every wait is a poll with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = """
[service]
hostname = "mx.test"
stop_timeout = "10s"

[postoffice]
domain = "example.test"
threads = 2  # the default is 1; two exercise concurrent delivery and per-thread names

[log.levels]
Sent = "maximum"
Queue = "maximum"
Interchange = "maximum"
Receive = "maximum"
Supervision = "maximum"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Mailgate:
    """One data directory and the mailgate processes run on it."""

    def __init__(
        self,
        root: Path,
        *,
        config: str = DEFAULT_CONFIG,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ):
        self.root = root
        self.data_dir = data_dir or root / "var"
        self.config_path = root / "mailgate.toml"
        self.config_path.write_text(config)
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = root / "stderr.log"
        self.log_dir = self.data_dir / "log"

    # --- running ---------------------------------------------------------------------------------
    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mailgate", *args]

    def start(self, *extra: str, wait: bool = True, env: dict[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.command(
                "run",
                "--config", str(self.config_path),
                "--data-dir", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}",
                # No admin listener unless a test asks: the default port would be shared.
                *([] if "--admin-listen" in extra or b"[admin]" in self.config_path.read_bytes()
                  else ["--admin-listen", ""]),
                *extra,
            ),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**self.env, **(env or {})},
        )  # fmt: skip
        stderr.close()
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.close()  # never leave a half-started service running behind a test
                raise

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"mailgate exited with {self.proc.returncode}:\n{self.stderr()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    return s.recv(512).startswith(b"220")
            except OSError:
                return False

        wait_for(ready, timeout, 0.05, "mailgate to accept SMTP")
        wait_for(self.healthy, timeout, 0.05, "every mailgate process to report healthy")

    def healthy(self) -> bool:
        """Whether the service answers on its control socket and reports itself healthy."""
        from mailgate.control.server import request, socket_path

        try:
            return bool(request(socket_path(self.data_dir), "health", timeout=2)["healthy"])
        except (OSError, RuntimeError, ValueError):
            return False

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def cli(
        self, *args: str, input: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        where = ("--config", str(self.config_path), "--data-dir", str(self.data_dir))
        return subprocess.run(
            self.command(*args, *where),
            capture_output=True, text=True, input=input, timeout=60, check=check, env=self.env,
        )  # fmt: skip

    # --- inspecting ------------------------------------------------------------------------------
    def events(self, event_id: int | None = None) -> list[dict[str, Any]]:
        # The log rotates under load: read the rotated files too, oldest first.
        rotated = sorted(self.log_dir.glob("events.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
        paths = [p for p in [*rotated, self.log_dir / "events.jsonl"] if p.exists()]
        found = []
        lines = [line for p in paths for line in p.read_text(errors="replace").splitlines()]
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if event_id is None or record["id"] == event_id:
                    found.append(record)
        return found

    def wait_events(
        self, event_id: int, timeout: float = 10.0, count: int = 1
    ) -> list[dict[str, Any]]:
        """Events arrive through the master a moment after the fact: poll for them."""
        return wait_for(  # type: ignore[no-any-return]
            lambda: (found := self.events(event_id)) and len(found) >= count and found,
            timeout,
            0.05,
            f"{count} event(s) {event_id}",
        )

    def mailbox_dir(self, net: str, po: str, mbx: str) -> Path:
        return self.data_dir / "postoffice" / net / po / mbx

    def add_mailbox(self, ms_address: str) -> str:
        result = self.cli("mailbox", "add", ms_address)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def delivered(self, net: str, po: str, mbx: str) -> list[Path]:
        box = self.mailbox_dir(net, po, mbx)
        return sorted([*box.joinpath("new").iterdir(), *box.joinpath("cur").iterdir()])


@contextlib.contextmanager
def running(root: Path, **kwargs: Any) -> Iterator[Mailgate]:
    mg = Mailgate(root, **kwargs)
    try:
        yield mg
    finally:
        mg.close()


def header(path: Path, name: str) -> str | None:
    """The value of header `name` in a delivered Maildir file."""
    prefix = name.lower().encode() + b":"
    for line in path.read_bytes().split(b"\n\n", 1)[0].split(b"\n"):
        if line.lower().startswith(prefix):
            return line[len(prefix) :].strip().decode(errors="replace")
    return None


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
