"""Per-address session limits are the instance's, and trusted clients are exempt (issue 14.4).

Regression: `max_sessions_per_ip` was counted per receive process, so a client spread
over N workers could hold N times the limit, while 50 sessions from a Postfix in
relay_networks (its default concurrency) were refused 421 by a limit Postfix itself
lifts for $mynetworks.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

LIMIT = 4


def _config(relay_networks: str) -> str:
    return DEFAULT_CONFIG + (
        f"\n[smtp]\nmax_sessions_per_ip = {LIMIT}\nrelay_networks = {relay_networks}\n"
        "\n[processes]\nreceive = 3\n"
    )


def _open(port: int, source: str, count: int) -> tuple[list[socket.socket], list[bytes]]:
    """`count` sessions from `source`, held open; the greetings they got."""
    held, greetings = [], []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
        held.append(sock)
        greetings.append(sock.recv(512))
    return held, greetings


def test_fifty_sessions_from_relay_networks_never_refused(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path, config=_config('["127.0.0.1/32"]'))
    mg.start()
    held: list[socket.socket] = []
    try:
        held, greetings = _open(mg.port, "127.0.0.1", 50)
        refused = [g for g in greetings if not g.startswith(b"220")]
        assert refused == [], f"{len(refused)} of 50 trusted sessions refused: {refused[:1]}"
    finally:
        for sock in held:
            sock.close()
        mg.close()


def test_per_address_limit_holds_across_receive_workers(tmp_path: Path) -> None:
    # 127.0.0.2 is loopback too, but not in relay_networks: a stranger, limited.
    mg = Mailgate(tmp_path, config=_config('["127.0.0.1/32"]'))
    mg.start()
    held: list[socket.socket] = []
    try:
        held, greetings = _open(mg.port, "127.0.0.2", 3 * LIMIT)
        admitted = [g for g in greetings if g.startswith(b"220")]
        refused = [g for g in greetings if g.startswith(b"421 4.7.0 Too many connections from")]
        # Three workers each counting alone would admit up to 3 * LIMIT of them.
        assert len(admitted) == LIMIT and len(refused) == 2 * LIMIT, greetings
        held.pop(0).close()  # one ends: its slot is free again, whichever worker held it

        def one_more_admitted() -> bool:
            extra, (greeting,) = _open(mg.port, "127.0.0.2", 1)
            held.extend(extra)
            return greeting.startswith(b"220")

        wait_for(one_more_admitted, 10, 0.1, "a freed slot admitting the address again")
        extra, (over,) = _open(mg.port, "127.0.0.2", 1)
        held.extend(extra)
        assert over.startswith(b"421 4.7.0"), over
    finally:
        for sock in held:
            sock.close()
        mg.close()


def test_exemption_can_be_turned_off(tmp_path: Path) -> None:
    config = _config('["127.0.0.0/8"]').replace(
        f"max_sessions_per_ip = {LIMIT}\n",
        f"max_sessions_per_ip = {LIMIT}\nrelay_networks_exempt = false\n",
    )
    mg = Mailgate(tmp_path, config=config)
    mg.start()
    held: list[socket.socket] = []
    try:
        held, greetings = _open(mg.port, "127.0.0.1", LIMIT + 2)
        assert sum(g.startswith(b"220") for g in greetings) == LIMIT, greetings
    finally:
        for sock in held:
            sock.close()
        mg.close()
