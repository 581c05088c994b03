"""The admin HTTP listener of a real service, in both modes (master with workers, and
--single-process): /metrics parsed as Prometheus text, /healthz following the service's
health, /status, the token, and the refusals at start."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

ALICE = "alice@po1.net1.example.test"
TOKEN = "t0ken-for-the-admin-tests-4f1c9a"
MODES = [pytest.param((), id="workers"), pytest.param(("--single-process",), id="single")]

FAMILIES = {
    # queues, by connector
    "mailgate_queue_length", "mailgate_queue_oldest_age_seconds", "mailgate_queue_recipients",
    # flow
    "mailgate_messages_received", "mailgate_bytes_received", "mailgate_attempts",
    "mailgate_delivered", "mailgate_deferred", "mailgate_bounced",
    "mailgate_delivery_latency_seconds",
    # SMTP
    "mailgate_smtp_sessions_open", "mailgate_smtp_sessions", "mailgate_smtp_recipients_rejected",
    "mailgate_messages_refused",
    # threads and supervision
    "mailgate_thread_cpu_seconds", "mailgate_thread_state", "mailgate_restarts",
    "mailgate_stalled_threads", "mailgate_abandoned_threads", "mailgate_healthy",
}  # fmt: skip

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def start(
    tmp_path: Path, mode: tuple[str, ...], config: str = DEFAULT_CONFIG, **env: str
) -> tuple[Mailgate, int]:
    mg = Mailgate(tmp_path, config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    port = free_port()
    mg.start(*mode, "--admin-listen", f"127.0.0.1:{port}", env=env or None)
    return mg, port


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def scrape(port: int, token: str | None = None) -> tuple[set[str], Samples]:
    """The family names and every sample of /metrics, parsed by prometheus_client."""
    code, body, headers = get(port, "/metrics", token)
    assert code == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    families = list(text_string_to_metric_families(body.decode()))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return {f.name for f in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def labels_of(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def send(port: int, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for n in range(count):
            client.sendmail("sender@example.org", [ALICE], f"Subject: m{n}\r\n\r\nbody {n}\r\n")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("sender@example.org", ["nobody@po1.net1.example.test"], "x")


@pytest.mark.parametrize("mode", MODES)
def test_metrics_report_every_family_with_zeros_then_count_real_mail(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    mg, admin = start(tmp_path, mode)
    try:

        def every_thread() -> tuple[set[str], Samples] | None:
            names, samples = scrape(admin)  # a worker shows once its first heartbeat came
            threads = {s["thread"] for s in labels_of(samples, "mailgate_thread_state")}
            return (names, samples) if "postoffice-2" in threads else None

        names, samples = wait_for(every_thread, 10, 0.1, "the delivery threads")
        assert names >= FAMILIES, f"missing: {sorted(FAMILIES - names)}"
        connector = {"connector": "postoffice"}
        assert value(samples, "mailgate_queue_length", **connector) == 0
        assert value(samples, "mailgate_queue_recipients", **connector, state="held") == 0
        for source in ("smtp", "pickup"):
            assert value(samples, "mailgate_messages_received_total", source=source) == 0
        assert value(samples, "mailgate_delivered_total", **connector) == 0
        assert value(samples, "mailgate_deferred_total", **connector) == 0
        assert value(samples, "mailgate_bounced_total", **connector) == 0
        assert value(samples, "mailgate_delivery_latency_seconds_count", **connector) == 0
        sessions = value(samples, "mailgate_smtp_sessions_total")  # wait_ready's probe counts
        assert value(samples, "mailgate_healthy") == 1
        assert value(samples, "mailgate_stalled_threads") == 0
        threads = {s["thread"] for s in labels_of(samples, "mailgate_thread_state")}
        assert {"postoffice-1", "postoffice-2", "smtp", "admin"} <= threads
        assert all(s["state"] for s in labels_of(samples, "mailgate_thread_state"))
        assert labels_of(samples, "mailgate_thread_cpu_seconds_total")

        send(mg.port, 3)

        def counted() -> Samples | None:
            _, now = scrape(admin)
            done = (
                value(now, "mailgate_messages_received_total", source="smtp") >= 3
                and value(now, "mailgate_delivered_total", **connector) >= 3
                and value(now, "mailgate_delivery_latency_seconds_count", **connector) >= 3
                and value(now, "mailgate_smtp_recipients_rejected_total") >= 1
            )
            return now if done else None

        after = wait_for(counted, 20, 0.2, "the counters to move")
        assert value(after, "mailgate_bytes_received_total", source="smtp") > 0
        assert value(after, "mailgate_smtp_sessions_total") >= sessions + 1
        assert value(after, "mailgate_attempts_total", **connector, outcome="delivered") >= 3
        inf = value(after, "mailgate_delivery_latency_seconds_bucket", **connector, le="+Inf")
        assert inf == value(after, "mailgate_delivery_latency_seconds_count", **connector)
        assert len(mg.delivered("NET1", "PO1", "ALICE")) == 3

        code, body, _ = get(admin, "/status")
        assert code == 200
        status = json.loads(body)
        ctl = json.loads(mg.cli("ctl", "status", "--json", check=True).stdout)
        assert set(status) == set(ctl) and "counters" in status
        assert status["queues"].keys() == ctl["queues"].keys()
    finally:
        mg.close()


@pytest.mark.parametrize("mode", MODES)
def test_healthz_turns_503_when_a_delivery_thread_stalls(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    config = DEFAULT_CONFIG + '\n[supervise]\nstall_after = "2s"\n'
    mg, admin = start(tmp_path, mode, config, MAILGATE_FAULTS="interchange.deliver=hang")
    try:
        code, body, _ = get(admin, "/healthz")
        assert (code, json.loads(body)) == (200, {"healthy": True, "reasons": []})
        send(mg.port, 1)
        code, body, _ = wait_for(
            lambda: (reply := get(admin, "/healthz"))[0] == 503 and reply, 20, 0.2, "503"
        )
        answer = json.loads(body)
        assert answer["healthy"] is False
        assert any("stalled" in reason for reason in answer["reasons"]), answer
        _, samples = scrape(admin)
        assert value(samples, "mailgate_healthy") == 0
        assert value(samples, "mailgate_stalled_threads") >= 1
    finally:
        mg.close()


def test_non_loopback_listener_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    mg = Mailgate(tmp_path)
    mg.start("--admin-listen", f"0.0.0.0:{free_port()}", wait=False)
    assert mg.proc is not None
    assert mg.proc.wait(30) == 2
    assert "admin" in mg.stderr() and "token" in mg.stderr()
    mg.config_path.write_text(DEFAULT_CONFIG + '\n[admin]\nlisten = "0.0.0.0:8025"\n')
    checked = subprocess.run(
        mg.command("check-config", str(mg.config_path)), capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 1 and "admin: listen '0.0.0.0:8025'" in checked.stderr


@pytest.mark.parametrize("mode", MODES)
def test_admin_port_in_use_is_an_error_at_start(tmp_path: Path, mode: tuple[str, ...]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        mg = Mailgate(tmp_path)
        mg.start(*mode, "--admin-listen", f"127.0.0.1:{port}", wait=False)
        assert mg.proc is not None
        assert mg.proc.wait(30) == 1
    failed = mg.events(1002)
    assert failed, mg.stderr()
    message = failed[-1]["message"]
    assert "cannot start" in message and f"admin listener 127.0.0.1:{port}" in message, message


@pytest.mark.parametrize("mode", MODES)
def test_token_is_required_when_set(tmp_path: Path, mode: tuple[str, ...]) -> None:
    config = DEFAULT_CONFIG + f'\n[admin]\ntoken = "{TOKEN}"\n'
    mg = Mailgate(tmp_path, config=config)
    port = free_port()
    mg.start(*mode, "--admin-listen", f"0.0.0.0:{port}")  # allowed: a token is set
    try:
        for path in ("/metrics", "/healthz", "/status"):
            code, _, headers = get(port, path)
            assert code == 401 and headers["WWW-Authenticate"] == "Bearer"
            assert get(port, path, "wrong-token")[0] == 401
            assert get(port, path, TOKEN)[0] == 200
        names, _ = scrape(port, TOKEN)
        assert names >= FAMILIES
        logged = mg.stderr() + "".join(p.read_text() for p in mg.log_dir.glob("events.jsonl*"))
        assert TOKEN not in logged
    finally:
        mg.close()
