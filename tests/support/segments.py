"""A raw SMTP client that counts the TCP segments each exchange took.

`tcpi_data_segs_in` (TCP_INFO, Linux 4.6+) is the number of data-carrying segments the
client's kernel received: on loopback (MTU 64 KiB) a reply the server sent with one send()
arrives as one segment, one sent line by line as several.
"""

from __future__ import annotations

import socket
import struct

TIMEOUT = 10.0
_DATA_SEGS_IN = 152  # offset of tcpi_data_segs_in in struct tcp_info (include/uapi/linux/tcp.h)


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= _DATA_SEGS_IN + 4, "this kernel's TCP_INFO has no tcpi_data_segs_in"
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


class Client:
    """A raw SMTP client that also tells how many segments each exchange took."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.rfile = self.sock.makefile("rb")
        assert self.reply().startswith(b"220 ")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.rfile.readline(4096)
            assert line, f"connection closed after {lines!r}"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def exchange(self, commands: bytes, replies: int) -> tuple[list[bytes], int]:
        """Send `commands` in one send(); read `replies` replies; and the segments they took."""
        before = data_segments_in(self.sock)
        self.sock.sendall(commands)
        got = [self.reply() for _ in range(replies)]
        return got, data_segments_in(self.sock) - before
