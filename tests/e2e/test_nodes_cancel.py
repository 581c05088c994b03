"""An administrator's cancel crosses nodes: `mailgate queue hold ID` run on node A, for a
message node B is delivering right now, cancels B's attempt (heard over LISTEN/NOTIFY),
not only the lease in the store. Two single-process nodes on one schema; B delivers to a
smarthost that hangs on MAIL, A delivers nothing (`connectors = []`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kb import send
from tests.support.nodes import make_node
from tests.support.process import Mailgate, wait_for
from tests.support.sink import Sink
from tests.support.stores import pg_schema

FRIEND = "friend@elsewhere.org"


@pytest.fixture
def url() -> Iterator[str]:
    with pg_schema() as (_, schema_url):
        yield schema_url


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


def smarthost(port: int) -> str:
    return (
        'retry_min = "1h"\nretry_max = "2h"\n'  # the cancelled attempt is not retried here
        f'\n[smarthost]\nhost = "127.0.0.1"\nport = {port}\nthreads = 1\n'
    )


def state(mg: Mailgate, queue_id: str) -> str:
    shown = mg.cli("queue", "show", queue_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return str(json.loads(shown.stdout)["recipients"][0]["state"])


def test_hold_on_one_node_cancels_the_attempt_of_another(
    tmp_path: Path, url: str, sink: Sink
) -> None:
    a = make_node(tmp_path / "a", "a", url, extra=smarthost(sink.port))
    a.config_path.write_text(
        a.config_path.read_text().replace('node = "a"\n', 'node = "a"\nconnectors = []\n')
    )
    b = make_node(tmp_path / "b", "b", url, extra=smarthost(sink.port))
    try:
        assert a.cli("db", "upgrade").returncode == 0
        a.start("--single-process")
        b.start("--single-process")
        sink.hang("MAIL")
        queue_id = send(a, "a@example.org", [FRIEND], b"Subject: stuck\r\n\r\nbody\r\n")
        wait_for(lambda: sink.hanging == 1, 20, what="B's smarthost session hung on MAIL")
        assert state(a, queue_id) == "active"

        held = a.cli("queue", "hold", queue_id, "--json")
        assert held.returncode == 0, held.stdout + held.stderr
        [fate] = json.loads(held.stdout)["revoked"]
        assert fate["thread"] == "smarthost-1" and fate["fate"] == "cancelled", fate
        # B heard the cancel and stopped its attempt, as a local command would have.
        cancelled = [e for e in b.wait_events(2463) if e["fields"]["queue_id"] == queue_id]
        assert cancelled and cancelled[0]["fields"]["thread"] == "smarthost-1", cancelled
        assert state(b, queue_id) == "held"
        assert not a.events(2463), "A delivers nothing: it had nothing to cancel"

        sink.release()  # the smarthost answers again: the cancelled session is gone
        wait_for(lambda: sink.hanging == 0, 10, what="the hung session ended")
        assert not sink.messages, "nothing was delivered"
        assert state(a, queue_id) == "held"
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.close()
        b.close()
