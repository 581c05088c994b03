"""Regression: the admin listener's connections must have Nagle off.

asyncio sets TCP_NODELAY only on sockets whose protocol number says TCP; a listening
socket made with protocol 0 gave accepted sockets that kept Nagle on, and a keep-alive
client (a browser, Prometheus) then waited its 40 ms delayed ACK on every answer, since
uvicorn writes a response's head and body separately."""

from __future__ import annotations

import select
import socket

from mailgate.web.admin import bind_admin


def test_admin_connections_have_nagle_off() -> None:
    listener = bind_admin("127.0.0.1:0")
    try:
        assert listener.proto == socket.IPPROTO_TCP
        with socket.create_connection(listener.getsockname()[:2], timeout=5):
            assert select.select([listener], [], [], 5)[0], "the connection arrives"
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        listener.close()
