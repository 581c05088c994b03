"""Named connectors end to end: two smarthosts chosen by domain, each with its own threads,
queue line in `ctl status` and /metrics labels; a reload naming a connector that is not
running is refused with event 1100 and the running routes stay (issue 15 point 1)."""

from __future__ import annotations

import json
import signal
import smtplib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for
from tests.support.sink import HangingServer, Sink

MODES = [("--single-process",), ()]


def smarthost(name: str, sink: Sink, settings: str) -> str:
    head = f'[[connector]]\nname = "{name}"\ntype = "smtp"\nhost = "127.0.0.1"\n'
    return f"{head}port = {sink.port}\n{settings}\n"


def route(match: str, connector: str) -> str:
    return f'[[route]]\nmatch = "{match}"\nconnector = "{connector}"\n'


def config(east: Sink, west: Sink, extra_route: str = "") -> str:
    return "\n".join(
        [
            DEFAULT_CONFIG,
            '[queue]\nretry_min = "1s"\nretry_max = "2s"\n',
            smarthost("east", east, "threads = 1\nmessages_per_connection = 2"),
            smarthost("west", west, "threads = 3\nbatch = 4"),
            route("MS:*/*/*", "postoffice"),
            route("*@east.example", "east"),
            extra_route,
            route("*", "west"),
        ]
    )


@pytest.fixture
def sinks() -> Iterator[tuple[Sink, Sink]]:
    with Sink() as east, Sink() as west:
        yield east, west


def send(mg: Mailgate, rcpts: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=10) as client:
        client.sendmail("sender@example.org", rcpts, f"Subject: {subject}\r\n\r\nbody\r\n")


def status(mg: Mailgate) -> dict[str, object]:
    result = mg.cli("ctl", "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", MODES)
def test_two_smarthosts_by_domain_each_with_its_threads_queue_and_metrics(
    tmp_path: Path, sinks: tuple[Sink, Sink], mode: tuple[str, ...]
) -> None:
    east, west = sinks
    mg = Mailgate(tmp_path, config=config(east, west))
    admin = free_port()
    mg.start(*mode, "--admin-listen", f"127.0.0.1:{admin}")
    try:
        for n in range(3):
            send(mg, [f"a{n}@east.example"], f"east {n}")
        send(mg, ["b@west.example", "c@elsewhere.example"], "west")
        got_east = east.wait_messages(3)
        got_west = west.wait_messages(1)
        assert sorted(r for m in got_east for r in m.recipients) == [
            f"a{n}@east.example" for n in range(3)
        ]
        assert sorted(got_west[0].recipients) == ["b@west.example", "c@elsewhere.example"]
        # messages_per_connection = 2: the third message came on a second connection.
        wait_for(lambda: east.connections >= 2, 10, what="a new connection after two messages")
        assert east.connections == 2, "one thread: two messages on the first, reused with RSET"
        answer = status(mg)
        queues = answer["queues"]
        assert isinstance(queues, dict)
        assert set(queues) == {"postoffice", "east", "west"}, queues
        wait_for(lambda: status(mg)["queues"]["east"]["delivered"] == 3, 10, what="east count")
        threads = [t["name"] for p in answer["processes"] for t in p["threads"]]  # type: ignore[attr-defined]
        assert {"east-1", "west-1", "west-2", "west-3"} <= set(threads), threads
        assert "east-2" not in threads
        text = mg.cli("ctl", "status").stdout
        assert "east" in text and "west" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        for name in ("east", "west", "postoffice"):
            assert f'mailgate_queue_length{{connector="{name}"}}' in metrics, metrics
        assert 'mailgate_delivered_total{connector="east"} 3.0' in metrics
        assert 'mailgate_connector_threads{connector="west"} 3.0' in metrics
        assert 'mailgate_connector_destination_down{connector="east"} 0.0' in metrics
        west_line = status(mg)["queues"]["west"]
        assert (west_line["threads"], west_line["down"]) == (3, ""), west_line
        assert west_line["connections"] >= 1, "kept open for reuse"
        # Pausing one connector leaves the other delivering.
        assert mg.cli("ctl", "pause", "east").returncode == 0
        send(mg, ["d@east.example"], "held back")
        send(mg, ["e@west.example"], "goes")
        west.wait_messages(2)
        assert len(east.messages) == 3
        assert mg.cli("ctl", "resume", "east").returncode == 0
        east.wait_messages(4)
        assert mg.stop() == 0
    finally:
        mg.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_reload_routing_to_a_connector_not_running_is_refused(
    tmp_path: Path, sinks: tuple[Sink, Sink], mode: tuple[str, ...]
) -> None:
    east, west = sinks
    mg = Mailgate(tmp_path, config=config(east, west))
    mg.start(*mode)
    try:
        assert mg.proc is not None
        # A route to a connector no table declares: a configuration error naming the key.
        unknown = route("*@south.example", "south")
        mg.config_path.write_text(config(east, west, unknown))
        mg.proc.send_signal(signal.SIGHUP)
        problems = mg.wait_events(1100)[-1]["fields"]["problems"]
        assert "route[2].connector" in problems and "'south'" in problems, problems
        # Declared now, but not running: connectors are built at start.
        south = '[[connector]]\nname = "south"\ntype = "smtp"\nhost = "127.0.0.1"\nport = 1\n'
        mg.config_path.write_text(config(east, west, unknown) + south)
        mg.proc.send_signal(signal.SIGHUP)
        problems = mg.wait_events(1100, count=2)[-1]["fields"]["problems"]
        assert "route[2].connector" in problems and "not running" in problems, problems
        assert "last reload was REFUSED" in mg.cli("ctl", "status").stdout
        # The routes in force are the old ones: south.example still goes to west.
        send(mg, ["x@south.example"], "still west")
        assert west.wait_messages(1)[0].recipients == ["x@south.example"]
        assert mg.proc.poll() is None
    finally:
        mg.close()


def test_a_dead_destination_shows_down_in_status_and_metrics(
    tmp_path: Path, sinks: tuple[Sink, Sink]
) -> None:
    east, west = sinks
    dead = '[[connector]]\nname = "dead"\ntype = "smtp"\nhost = "127.0.0.1"\n'
    dead += f'port = {free_port()}\nthreads = 1\ndown_for = "1h"\n'
    mg = Mailgate(tmp_path, config=config(east, west, route("*@dead.example", "dead")) + dead)
    admin = free_port()
    mg.start("--admin-listen", f"127.0.0.1:{admin}")
    try:
        send(mg, ["x@dead.example"], "nowhere")
        mg.wait_events(2460)  # SmarthostUnreachable, naming the connector
        assert mg.events(2460)[0]["fields"]["connector"] == "dead"
        line = wait_for(lambda: (q := status(mg)["queues"]["dead"])["down"] and q, 10)
        assert "Connection refused" in line["down"] or "refused" in line["down"].lower(), line
        assert status(mg)["queues"]["west"]["down"] == ""
        text = mg.cli("ctl", "status").stdout
        assert "destination DOWN" in text, text
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        assert 'mailgate_connector_destination_down{connector="dead"} 1.0' in metrics
        assert 'mailgate_connector_destination_down{connector="west"} 0.0' in metrics
    finally:
        mg.close()


def test_each_connector_has_its_own_stall_watch(tmp_path: Path) -> None:
    """A hung gateway stalls its own connector (5006 names it) while the other delivers."""
    hanging = HangingServer(free_port())
    with Sink() as west:
        stalls = '[supervise]\nstall_after = "2s"\nstall_grace = "2s"\n'
        text = config(west, west).replace(f"port = {west.port}", f"port = {hanging.port}", 1)
        mg = Mailgate(tmp_path, config=text.replace("[queue]", stalls + "\n[queue]", 1))
        mg.start()
        try:
            send(mg, ["a@east.example"], "to the hung gateway")
            stalled = mg.wait_events(5006, timeout=20)
            assert {e["fields"]["connector"] for e in stalled} == {"east"}
            assert "east-1=" in stalled[0]["fields"]["threads"]
            assert "west-" not in stalled[0]["fields"]["threads"]
            for n in range(3):
                send(mg, [f"b{n}@west.example"], f"west {n}")
            west.wait_messages(3)
            assert {e["fields"]["connector"] for e in mg.events(5006)} == {"east"}
            # The stall itself is short: the supervisor aborts the hung connection (the
            # attempt is deferred, 2460 says so), so status shows east's own line with the
            # deferred recipient rather than a lasting "connector east stalled".
            wait_for(
                lambda: (
                    "queue east:" in (out := mg.cli("ctl", "status").stdout)
                    and "deferred" in out.split("queue east:", 1)[1].split("\n", 1)[0]
                ),
                20,
                what="east's own queue line with its deferred recipient",
            )
        finally:
            mg.close()
            hanging.stop()


def test_auth_with_an_inline_password_never_shows_it(tmp_path: Path) -> None:
    secret = "inline-s3cret-pw"
    with Sink(auth=("relayuser", secret)) as gateway, Sink() as west:
        settings = f'username = "relayuser"\npassword = "{secret}"\nstarttls = "none"'
        text = "\n".join(
            [
                DEFAULT_CONFIG,
                smarthost("east", gateway, settings),
                smarthost("west", west, ""),
                route("*@east.example", "east"),
                route("*", "west"),
            ]
        )
        mg = Mailgate(tmp_path, config=text)
        mg.start()
        try:
            send(mg, ["a@east.example"], "authenticated")
            gateway.wait_messages(1)
            assert gateway.logins == ["relayuser:ok"]
            shown = [mg.cli("ctl", "status", "--json").stdout, mg.cli("ctl", "dump").stdout]
            assert mg.stop() == 0
            logs = [p.read_text(errors="replace") for p in mg.log_dir.glob("events.jsonl*")]
            for text_seen in [*shown, *logs, mg.stderr()]:
                assert secret not in text_seen
        finally:
            mg.close()
