"""Sessions per client address counted across receive processes (receive/board.py) and
the exemption of trusted clients (receive/limits.py)."""

from __future__ import annotations

from mailgate.receive.board import SessionBoard
from mailgate.receive.limits import SessionLimiter


def test_session_board_counts_one_address_across_rows() -> None:
    master = SessionBoard.create(2)
    first = SessionLimiter(10, 2, SessionBoard(master.fd, 2, 0))
    second = SessionLimiter(10, 2, SessionBoard(master.fd, 2, 1))
    assert first.acquire("192.0.2.1") is None
    assert second.acquire("192.0.2.1") is None
    assert second.acquire("192.0.2.1") is not None  # the instance's limit, not the row's
    assert first.acquire("192.0.2.9") is None  # another address is counted apart
    master.clear(1)  # the second worker died: its sessions are gone
    assert first.acquire("192.0.2.1") is None
    first.release("192.0.2.1")
    assert master.count("192.0.2.1") == 1


def test_exempt_addresses_count_only_in_the_total() -> None:
    limiter = SessionLimiter(3, 1, exempt=lambda ip: ip == "127.0.0.1")
    assert [limiter.acquire("127.0.0.1") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("127.0.0.1") == "421 4.7.0 Too many connections, try again later"
    limiter.release("127.0.0.1")
    assert limiter.total == 2 and limiter.per_ip == {}
