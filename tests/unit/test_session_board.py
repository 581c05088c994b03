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


def test_the_instance_open_sessions_count_every_worker_and_exempt_clients() -> None:
    """A lone session lingers after its replies only if it is the instance's only one
    (receive/linger.py): the count spans the workers' rows and the clients the per-address
    limit exempts, and a worker's death (its row cleared) gives its sessions back."""
    master = SessionBoard.create(2)
    one = SessionBoard(master.fd, 2, 0)
    two = SessionBoard(master.fd, 2, 1)
    first = SessionLimiter(100, 5, one, exempt=lambda ip: ip == "127.0.0.1")
    second = SessionLimiter(100, 5, two, exempt=lambda ip: ip == "127.0.0.1")
    assert first.acquire("127.0.0.1") is None  # exempt: not on the per-address counts
    assert master.open_sessions() == 1 and one.count("127.0.0.1") == 0
    assert second.acquire("192.0.2.1") is None
    assert one.open_sessions() == two.open_sessions() == 2
    second.release("192.0.2.1")
    assert one.open_sessions() == 1
    master.clear(0)
    assert two.open_sessions() == 0
