"""The syslog sink: RFC 5424 lines over real UDP and TCP sockets on loopback, from the event
log alone and from a running service."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.config import parse_config
from mailgate.errors import ConfigError
from mailgate.observe import catalog
from mailgate.observe.events import open_event_log
from tests.support.process import DEFAULT_CONFIG, Mailgate, wait_for

LINE = re.compile(
    r"<(?P<pri>\d+)>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>\S+) mailgate "
    r"(?P<pid>\d+) (?P<id>\d+) - (?P<msg>.*)"
)
MAIL = 2  # the syslog facility


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        yield sock


def receive(sock: socket.socket, count: int) -> list[re.Match[str]]:
    lines = []
    for _ in range(count):
        data = sock.recv(65536).decode()
        match = LINE.fullmatch(data)
        assert match, f"not an RFC 5424 line: {data!r}"
        lines.append(match)
    return lines


def test_events_reach_a_udp_syslog_server(tmp_path: Path, udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    log = open_event_log(tmp_path, stderr=False, syslog=f"udp:127.0.0.1:{port}")
    try:
        log.emit(catalog.SERVICE_STARTED, version="1", pid=1, data_dir="/d", listen="x:25")
        log.emit(catalog.THREAD_STALLED, thread="postoffice-1", role="interchange", seconds=3,
                 cpu_rate=0.0, kind="blocked", queue_id="Q1", recipient="a@b",
                 stack='  File "x.py", line 1\n    hang()\n')  # fmt: skip
        log.emit(catalog.SERVICE_FAILED, reason="a\r\nforged line")
    finally:
        log.close()
    started, stalled, failed = receive(udp, 3)
    assert int(started["pri"]) == MAIL * 8 + 6  # info
    assert started["id"] == "1000" and started["host"] == socket.gethostname().split()[0]
    assert "mailgate 1 started" in started["msg"]
    assert int(stalled["pri"]) == MAIL * 8 + 3 and stalled["id"] == "5003"  # error
    assert "\\n    hang()" in stalled["msg"], "the stack travels on one line"
    assert int(failed["pri"]) == MAIL * 8 + 2  # critical
    assert "\n" not in failed["msg"] and "\r" not in failed["msg"]


def test_events_reach_a_tcp_syslog_server_octet_counted(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(10)
        port = server.getsockname()[1]
        log = open_event_log(tmp_path, stderr=False, syslog=f"tcp:127.0.0.1:{port}")
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            for n in range(2):
                log.emit(catalog.SERVICE_STOPPED, reason=f"test {n}")
            log.close()
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    frames = []
    while data:  # RFC 6587 octet counting: "LENGTH SP MESSAGE"
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)].decode())
        data = rest[int(length) :]
    assert len(frames) == 2
    assert all(LINE.fullmatch(f) for f in frames), frames
    assert "test 1" in frames[1]


def test_a_syslog_server_that_is_down_does_not_stop_the_log(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens there once closed
    log = open_event_log(tmp_path, stderr=False, syslog=f"tcp:127.0.0.1:{port}")
    log.emit(catalog.SERVICE_STOPPED, reason="still written")
    log.close()
    assert "still written" in (tmp_path / "events.jsonl").read_text()


def test_syslog_targets_are_validated() -> None:
    for good in ("", "/dev/log", "udp:127.0.0.1:514", "tcp:[::1]:601"):
        assert parse_config({"log": {"syslog": good}}).log.syslog == good
    for bad in ("syslog.example", "udp:nohost", "http:x:1"):
        with pytest.raises(ConfigError) as info:
            parse_config({"log": {"syslog": bad}})
        assert info.value.problems[0][0] == "log.syslog"


def test_a_running_service_logs_to_syslog(tmp_path: Path, udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    config = DEFAULT_CONFIG.replace(
        "[log.levels]", f'[log]\nsyslog = "udp:127.0.0.1:{port}"\n\n[log.levels]'
    )
    mg = Mailgate(tmp_path, config=config)
    mg.start("--admin-listen", "")
    try:
        assert mg.proc is not None
        master = mg.proc.pid
        seen: list[re.Match[str]] = []

        def started() -> bool:
            seen.extend(receive(udp, 1))
            ids = {m["id"] for m in seen}
            return "1000" in ids and any(int(m["pid"]) != master for m in seen)

        # 1000 is the master's own; a worker's events (its threads starting) keep its pid
        wait_for(started, 20, 0, "event 1000 and a worker's event over syslog")
    finally:
        mg.close()
