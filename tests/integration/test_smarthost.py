"""The smarthost connector against a real SMTP sink: reuse, reconnects, TLS, AUTH, SMTPUTF8."""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from mailgate.connectors.smtp import SmarthostConnector, SmarthostTarget
from mailgate.errors import TemporaryFailure
from mailgate.interchange.inflight import CANCELLED_REPLY
from mailgate.model import Claim, Disposition
from mailgate.observe.events import EventLog
from tests.support.process import wait_for
from tests.support.sink import Sink

BODY = b"Subject: hi\r\n\r\nhello\r\n"


def claim(address: str = "r@elsewhere.org", rid: int = 1, **kw: object) -> Claim:
    values: dict[str, object] = {
        "recipient_id": rid, "queue_id": "Q1", "address": address, "connector": "smarthost",
        "sender": "s@example.org", "received_at": 1.0, "attempts": 1, "internal_failures": 0,
        "redelivery": False, "smtputf8": False,
    }  # fmt: skip
    values.update(kw)
    return Claim(**values)  # type: ignore[arg-type]


def connector(sink: Sink, **kw: object) -> SmarthostConnector:
    values: dict[str, object] = {"host": "127.0.0.1", "port": sink.port, "helo": "mx.test"}
    values.update(kw)
    return SmarthostConnector(SmarthostTarget(**values), EventLog())  # type: ignore[arg-type]


def test_one_connection_for_many_messages_and_a_transparent_reconnect() -> None:
    sink = Sink().start()
    session = connector(sink).open()
    try:
        for n in range(3):
            [result] = session.deliver([claim(rid=n)], BODY)
            assert result.disposition is Disposition.DELIVERED
        assert sink.connections == 1
        sink.stop()  # the server goes away while our connection idles...
        sink.start()  # ...and comes back: the stale connection is replaced once, silently
        [result] = session.deliver([claim(rid=9)], BODY)
        assert result.disposition is Disposition.DELIVERED and result.remote_mta == "127.0.0.1"
        assert len(sink.messages) == 4 and sink.connections == 1
    finally:
        session.close()
        sink.stop()


def test_per_recipient_replies_in_one_transaction() -> None:
    with Sink() as sink:
        sink.fail("RCPT", "452 4.2.2 mailbox full", address="full@x.org")
        sink.fail("RCPT", "550 5.1.1 unknown", address="gone@x.org")
        session = connector(sink).open()
        results = session.deliver(
            [claim("ok@x.org", 1), claim("full@x.org", 2), claim("gone@x.org", 3)], BODY
        )
        session.close()
    assert [r.disposition for r in results] == [
        Disposition.DELIVERED, Disposition.DEFERRED, Disposition.FAILED,
    ]  # fmt: skip
    assert results[2].reply == "550 5.1.1 unknown"
    assert [m.recipients for m in sink.messages] == [["ok@x.org"]]


def test_data_rejection_applies_to_accepted_recipients() -> None:
    with Sink() as sink:
        sink.fail("DATA", "554 5.6.0 content rejected")
        session = connector(sink).open()
        results = session.deliver([claim("a@x.org", 1), claim("b@x.org", 2)], BODY)
        session.close()
    assert {r.reply for r in results} == {"554 5.6.0 content rejected"}
    assert all(r.disposition is Disposition.FAILED for r in results)


def test_unreachable_host_is_temporary_and_not_hammered() -> None:
    sink = Sink()  # never started: connection refused
    conn = connector(sink, down_for=60.0)
    session = conn.open()
    with pytest.raises(TemporaryFailure, match=r"^451 4\.4\.1"):
        session.deliver([claim()], BODY)
    sink.start()
    try:
        with pytest.raises(TemporaryFailure, match="is down"):
            session.deliver([claim()], BODY)  # deferred at once: no new connection
        assert sink.connections == 0
    finally:
        sink.stop()


def test_required_starttls_that_is_not_offered_defers() -> None:
    with Sink() as sink:
        session = connector(sink, starttls="required").open()
        with pytest.raises(TemporaryFailure, match="STARTTLS"):
            session.deliver([claim()], BODY)
        assert sink.messages == []


def test_auth_with_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    with Sink(auth=("relayuser", "s3cret")) as sink:
        session = connector(sink, username="relayuser", password_file=str(secret)).open()
        assert session.deliver([claim()], BODY)[0].disposition is Disposition.DELIVERED
        session.close()
        assert sink.logins == ["relayuser:ok"]
        secret.write_text("wrong\n")
        session = connector(sink, username="relayuser", password_file=str(secret)).open()
        with pytest.raises(TemporaryFailure) as failure:
            session.deliver([claim()], BODY)
        assert "wrong" not in failure.value.reply, "the password never appears in replies"


def test_smtputf8_message_to_a_host_without_it_fails_permanently() -> None:
    with Sink(smtputf8=False) as sink:
        session = connector(sink).open()
        [result] = session.deliver([claim("j\u00f6rg@x.org", smtputf8=True)], BODY)
        session.close()
    assert result.disposition is Disposition.FAILED and "5.6.7" in result.reply
    assert sink.messages == []


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from mailgate.security.certs import generate

    return generate(tmp_path_factory.mktemp("pki"), "localhost")


def server_tls(pki: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*pki)
    return context


def test_required_tls_with_verification_against_a_ca_file(pki: tuple[Path, Path]) -> None:
    with Sink(tls=server_tls(pki)) as sink:
        conn = connector(sink, host="localhost", starttls="required", ca_file=str(pki[0]))
        session = conn.open()
        assert session.deliver([claim()], BODY)[0].disposition is Disposition.DELIVERED
        assert session.conn is not None and session.conn.sock.version() is not None  # type: ignore[union-attr]
        session.close()
    assert len(sink.messages) == 1


def test_an_untrusted_certificate_defers_instead_of_sending_in_clear(
    pki: tuple[Path, Path],
) -> None:
    with Sink(tls=server_tls(pki)) as sink:
        for mode in ("required", "opportunistic"):
            session = connector(sink, host="localhost", starttls=mode).open()  # system CAs only
            with pytest.raises(TemporaryFailure, match="CERTIFICATE_VERIFY_FAILED"):
                session.deliver([claim()], BODY)
            session.close()
        assert sink.messages == []
        unverified = connector(sink, host="localhost", verify=False).open()
        assert unverified.deliver([claim()], BODY)[0].disposition is Disposition.DELIVERED
        unverified.close()


def recording() -> tuple[EventLog, list[tuple[int, dict[str, Any]]]]:
    """An event log that keeps (id, fields) of every event in a list."""
    events = EventLog()
    seen: list[tuple[int, dict[str, Any]]] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            event, fields, _ = record.mailgate_event  # type: ignore[attr-defined]
            seen.append((event.id, dict(fields)))

    events.add_sink(Seen())
    return events, seen


def deliver_in_thread(session: Any) -> tuple[threading.Thread, list[Any]]:
    """Run one delivery in another thread, as an interchange thread would; its result (or
    exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(session.deliver([claim()], BODY))
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_cancel_breaks_a_hung_attempt_without_marking_the_smarthost_down() -> None:
    with Sink() as sink:
        sink.hang("MAIL")
        c = connector(sink)
        session = c.open()
        thread, out = deliver_in_thread(session)
        wait_for(lambda: sink.hanging == 1, 10, what="the hung MAIL")
        assert session.cancel("OTHER") == "not started yet: skipped", "another message"
        assert session.cancel("Q1") == "its smarthost connection was broken"
        thread.join(10)
        [failure] = out
        assert isinstance(failure, TemporaryFailure) and failure.reply == CANCELLED_REPLY
        assert c.health.down_error() is None, "the administrator cancelled; the host is fine"
        sink.release()
        [result] = session.deliver([claim(queue_id="Q2")], BODY)
        assert result.disposition is Disposition.DELIVERED
        assert len(sink.messages) == 1


def test_cancel_leaves_a_message_being_handed_over_to_finish() -> None:
    """Once the whole message was sent, breaking the connection could make the smarthost
    deliver it twice (it may keep it, and the message would be sent again): left alone."""
    with Sink() as sink:
        sink.hang("DATA")
        session = connector(sink).open()
        thread, out = deliver_in_thread(session)
        wait_for(lambda: sink.hanging == 1, 10, what="the unanswered end of DATA")
        assert session.cancel("Q1") == "the message is being handed over (DATA): left to finish"
        sink.release()
        thread.join(10)
        [[result]] = out
        assert result.disposition is Disposition.DELIVERED and len(sink.messages) == 1


def test_a_stall_abort_says_so_and_clear_down_forgets_the_marking() -> None:
    with Sink() as sink:
        sink.hang("MAIL")
        events, seen = recording()
        c = SmarthostConnector(
            SmarthostTarget(host="127.0.0.1", port=sink.port, helo="mx.test", down_for=3600),
            events,
        )
        session = c.open()
        thread, out = deliver_in_thread(session)
        wait_for(lambda: sink.hanging == 1, 10, what="the hung MAIL")
        session.abort()  # what the supervisor does to a stalled thread
        thread.join(10)
        [failure] = out
        assert isinstance(failure, TemporaryFailure)
        assert "mailgate aborted the stalled connection" in failure.reply
        [(event_id, fields)] = seen
        assert event_id == 2460 and "mailgate aborted the stalled connection" in fields["error"]
        assert c.health.down_error() is not None
        sink.release()
        assert c.clear_down("mailgate ctl wake") is True
        assert seen[-1][0] == 2462 and seen[-1][1]["by"] == "mailgate ctl wake"
        assert c.health.down_error() is None and c.clear_down("again") is False
        [result] = session.deliver([claim(queue_id="Q2")], BODY)
        assert result.disposition is Disposition.DELIVERED


def test_after_clear_down_a_smarthost_still_down_is_reported_again() -> None:
    sink = Sink()  # never started: connection refused
    events, seen = recording()
    target = SmarthostTarget(host="127.0.0.1", port=sink.port, helo="mx.test", down_for=3600)
    c = SmarthostConnector(target, events)
    session = c.open()
    for _ in range(2):
        with pytest.raises(TemporaryFailure, match=r"^451 4\.4\.1 smarthost 127"):
            session.deliver([claim()], BODY)
        assert c.health.down_error() is not None
        with pytest.raises(TemporaryFailure, match="is down"):
            session.deliver([claim()], BODY)
        assert c.clear_down("mailgate queue retry") is True
    assert c.clear_down("mailgate queue retry") is False, "not marked down now"
    assert [event_id for event_id, _ in seen] == [2460, 2462, 2460, 2462], "said again"


def test_rcpt_refusals_stand_when_the_connection_is_lost_after_data() -> None:
    """A recipient refused at RCPT keeps its 5xx when the smarthost goes away after the
    message was sent; only the accepted ones, whose fate is unknown, are deferred."""
    with Sink() as sink:
        sink.fail("RCPT", "550 5.1.1 unknown", address="gone@x.org")
        sink.drop("DATA", times=1)
        session = connector(sink).open()
        results = session.deliver([claim("ok@x.org", 1), claim("gone@x.org", 2)], BODY)
        session.close()
    assert [r.disposition for r in results] == [Disposition.DEFERRED, Disposition.FAILED]
    assert results[1].reply == "550 5.1.1 unknown"
    assert results[0].reply.startswith("451 4.4.1 smarthost 127.0.0.1:")
