"""receive/accept.py: one connection per wake-up on a listening socket, TLS handshakes that
fail ending their connection only, and close() leaving the shared socket listening."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.receive.accept import Acceptor
from mailgate.receive.listeners import bind
from mailgate.security.certs import generate


class Greeter(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"220 hello\r\n")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def on(loop: asyncio.AbstractEventLoop, call: object) -> None:
    done = threading.Event()

    def run() -> None:
        call()  # type: ignore[operator]
        done.set()

    loop.call_soon_threadsafe(run)
    assert done.wait(5)


def greeting(port: int, context: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        if context is None:
            return raw.recv(64)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.recv(64)


def test_plain_connections_are_served_and_close_leaves_the_socket_listening(
    loop: asyncio.AbstractEventLoop,
) -> None:
    listening = bind("127.0.0.1", 0)
    port = listening.getsockname()[1]
    acceptor = Acceptor(loop, listening.dup(), Greeter)
    on(loop, acceptor.start)
    assert [greeting(port) for _ in range(5)] == [b"220 hello\r\n"] * 5
    on(loop, acceptor.close)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as waiting:
        waiting.settimeout(0.3)  # queued on the shared socket, for the next acceptor
        with pytest.raises(TimeoutError):
            waiting.recv(64)
        again = Acceptor(loop, listening.dup(), Greeter)
        on(loop, again.start)
        waiting.settimeout(5)
        assert waiting.recv(64) == b"220 hello\r\n"  # nothing lost between the two
    on(loop, again.close)
    listening.close()


def test_a_failed_handshake_ends_only_its_connection(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    cert, key = generate(tmp_path, "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    listening = bind("127.0.0.1", 0)
    port = listening.getsockname()[1]
    acceptor = Acceptor(loop, listening.dup(), Greeter, tls=server, handshake_timeout=5)
    on(loop, acceptor.start)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(b"EHLO not-tls\r\n")
        answer = b""
        while chunk := plain.recv(64):  # until the server closes (a timeout fails the test)
            answer += chunk
        assert answer == b"" or answer.startswith(b"\x15")  # nothing, or a TLS alert
    client = ssl.create_default_context(cafile=str(cert))
    assert greeting(port, client) == b"220 hello\r\n"
    on(loop, acceptor.close)
    listening.close()
