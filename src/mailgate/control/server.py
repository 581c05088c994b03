"""The control socket: JSON lines over a Unix socket under the data directory.

One request per line, `{"command": "status", "args": {...}}`, one reply per line,
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`; the commands are
the control surface's (surface.py). Served by its own thread, which shares no lock
with the workers: every command reads lock-free views or flips flags, so control
answers even when every worker is wedged (the lesson of the seed). The socket is
created mode 0600 in a 0700 directory, so only the service's owner can use it. Each
client gets a short timeout; a slow or hostile client cannot hold the thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailgate.control.surface import Command, ControlSurface, command_table
from mailgate.supervise.handle import ThreadHandle

CLIENT_TIMEOUT = 2.0
MAX_REQUEST = 64 * 1024


def socket_path(data_dir: Path) -> Path:
    return data_dir / "run" / "control.sock"


def bind_control(path: Path) -> socket.socket:
    """Create the listening socket (0700 directory, 0600 socket); replaces a stale one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # we hold the data directory lock: any socket here is stale
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


class ControlServer:
    """Body of the `control` thread; `surface` builds each life's own surface."""

    def __init__(self, sock: socket.socket, surface: Callable[[], ControlSurface]) -> None:
        self.sock = sock
        self.surface = surface
        self.commands: dict[str, Command] = {}

    def __call__(self, handle: ThreadHandle) -> None:
        surface = self.surface()
        self.commands = command_table(surface)
        try:
            self._serve_all(handle)
        finally:
            surface.close()

    def _serve_all(self, handle: ThreadHandle) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while not handle.stopping:
                handle.progress()  # a heartbeat: the control loop is alive
                if not selector.select(timeout=0.5):
                    continue
                try:
                    client, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                with client:
                    handle.busy()
                    self._serve(client)
                    handle.idle()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(CLIENT_TIMEOUT)
        try:
            line = _read_line(client)
        except OSError:
            return
        reply = self.handle_line(line)
        with contextlib.suppress(OSError):
            client.sendall(json.dumps(reply, default=str).encode() + b"\n")

    def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            name = request["command"]
            args = request.get("args") or {}
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError("command must be a string and args an object")
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        command = self.commands.get(name)
        if command is None:
            known = ", ".join(sorted(self.commands))
            return {"ok": False, "error": f"unknown command {name!r}; known: {known}"}
        try:
            return {"ok": True, "result": command(args)}
        except Exception as exc:  # a failing command is an answer, never the end of control
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _read_line(client: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < MAX_REQUEST:
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def request(
    path: Path, command: str, args: dict[str, Any] | None = None, timeout: float = 5.0
) -> Any:
    """Send one command to a running service; raises OSError if none answers, RuntimeError
    with the service's message if the command failed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "unknown error"))
    return reply.get("result")
