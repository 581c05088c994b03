"""receive.linger: the wait awake for a lone client's next bytes ends when they come, or at
its bound, and never reads them."""

from __future__ import annotations

import os
import socket
import threading
import time

from mailgate.receive.linger import linger


def test_the_wait_ends_when_the_client_speaks_and_leaves_its_bytes() -> None:
    server, client = socket.socketpair()
    with server, client:
        timer = threading.Timer(0.02, client.sendall, (b"MAIL FROM:<a@b.test>\r\n",))
        timer.start()
        started = time.perf_counter()
        assert linger(server.fileno(), 5.0)
        waited = time.perf_counter() - started
        timer.join(5)
        assert 0.015 < waited < 4.0, "it waited for the bytes, and not for its bound"
        assert server.recv(100) == b"MAIL FROM:<a@b.test>\r\n", "the bytes are left to the parser"


def test_the_wait_is_bounded_when_nothing_comes() -> None:
    server, client = socket.socketpair()
    with server, client:
        started = time.perf_counter()
        assert not linger(server.fileno(), 0.01)
        assert 0.01 <= time.perf_counter() - started < 2.0


def test_a_client_gone_or_a_closed_socket_ends_the_wait_at_once() -> None:
    server, client = socket.socketpair()
    client.close()
    with server:
        started = time.perf_counter()
        assert linger(server.fileno(), 5.0), "a hangup is something for the loop to handle"
        assert time.perf_counter() - started < 2.0
    read, write = os.pipe()
    os.close(read)
    os.close(write)
    started = time.perf_counter()
    linger(read, 5.0)  # a closed descriptor: POLLNVAL, no exception, no wait to the bound
    assert time.perf_counter() - started < 2.0
