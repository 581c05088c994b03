"""receive/smtp.py's ReceiveHandler, its hooks called in-process the way aiosmtpd calls them,
over a real SQLite queue and its committer: admission, AUTH and its throttle, the EHLO
advert, MAIL and RCPT policy, and DATA answered 250 only once the message is durable (or
451 when the queue does not answer in time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope, LoginPassword, Session

from mailgate.config import parse_config
from mailgate.config.schema import RELAY_CONNECTORS, Config
from mailgate.model import NewMessage
from mailgate.observe import catalog
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.postoffice.address import PostofficeAddress
from mailgate.queue.commit import Committer
from mailgate.queue.inline import CONTENDED, InlineWriter
from mailgate.queue.store import QueueStore
from mailgate.receive.board import SessionBoard
from mailgate.receive.smtp import ReceiveHandler
from mailgate.route.policy import RecipientPolicy, postoffice_verifier
from mailgate.security.passwords import Credentials
from mailgate.service.wiring import address_map, router
from tests.support.stage import Stage, stage

ALICE = "alice@po1.net1.po.test"  # MS:NET1/PO1/ALICE, the one mailbox here
OUTSIDER = "192.0.2.7"  # not in relay_networks
LOOP = asyncio.new_event_loop()  # aiosmtpd's Session holds a loop; these hooks never use it
BODY = b"From: s@example.org\r\nSubject: hi\r\nMessage-ID: <m1@example.org>\r\n\r\nhello\r\n"


def config(tmp_path: Path, **smtp: Any) -> Config:
    return parse_config(
        {
            "service": {"hostname": "mx.test", "data_dir": str(tmp_path)},
            "postoffice": {"domain": "po.test"},
            "smarthost": {"host": "127.0.0.1", "port": 2626},
            "smtp": smtp,
        }
    )


def handler(
    tmp_path: Path,
    store: QueueStore,
    events: EventLog,
    credentials: Credentials | None = None,
    board: SessionBoard | None = None,
    **smtp: Any,
) -> ReceiveHandler:
    made = config(tmp_path, **smtp)
    mailboxes = {PostofficeAddress("NET1", "PO1", "ALICE")}
    policy = RecipientPolicy(
        router(made, address_map(made)),
        {"postoffice": postoffice_verifier(mailboxes.__contains__)},
        relay_connectors=RELAY_CONNECTORS,
        relay_networks=made.smtp.relay_networks,
    )
    return ReceiveHandler(
        made.smtp,
        store,
        policy,
        events,
        Counters(),
        hostname="mx.test",
        credentials=credentials,
        board=board,
    )


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Stage]:
    with stage(tmp_path) as made:
        yield made


@pytest.fixture
def receive(tmp_path: Path, queue: Stage) -> ReceiveHandler:
    return handler(tmp_path, queue.store, queue.events)


def session(ip: str = "127.0.0.1", *, authenticated: bool = False) -> Session:
    made = Session(LOOP)
    made.peer = (ip, 40000)
    made.host_name = "client.example.org"
    made.extended_smtp = True
    made.authenticated = authenticated
    return made


def rcpt(receive: ReceiveHandler, address: str, where: Session, envelope: Envelope) -> str:
    return asyncio.run(receive.handle_RCPT(None, where, envelope, address, []))  # type: ignore[arg-type]


def mail(receive: ReceiveHandler, address: str, envelope: Envelope) -> str:
    return asyncio.run(receive.handle_MAIL(None, session(), envelope, address, []))  # type: ignore[arg-type]


def data(receive: ReceiveHandler, where: Session, envelope: Envelope) -> str:
    async def answer() -> str:
        server = receive.protocol()  # the session's own protocol object, as aiosmtpd has it
        return await receive.handle_DATA(server, where, envelope)

    return asyncio.run(answer())


def envelope_to(
    receive: ReceiveHandler, *recipients: str, sender: str = "s@example.org"
) -> Envelope:
    envelope = Envelope()
    assert mail(receive, sender, envelope) == "250 2.1.0 Ok"
    for address in recipients:
        assert rcpt(receive, address, session(), envelope).startswith("250")
    envelope.original_content = BODY
    return envelope


def test_data_answers_250_once_the_message_is_in_the_queue_with_its_received_line(
    receive: ReceiveHandler, queue: Stage
) -> None:
    envelope = envelope_to(receive, ALICE, "far@elsewhere.org")
    reply = data(receive, session(), envelope)
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    queue_id = reply.rsplit(" ", 1)[1]
    found = queue.history(queue_id)
    assert {(r.address, r.connector, r.state) for r in found.recipients} == {
        (ALICE, "postoffice", "queued"),
        ("far@elsewhere.org", "smarthost", "queued"),
    }
    assert (found.sender, found.header_message_id) == ("s@example.org", "<m1@example.org>")
    reader = queue.store.reader()
    body = reader.body(queue_id)
    reader.close()
    assert body is not None and body.endswith(BODY)
    trace = body[: -len(BODY)].decode()
    assert trace.startswith("Received: from client.example.org") and queue_id in trace
    assert "by mx.test" in trace and "with ESMTP" in trace
    [received] = queue.seen.of(catalog.MESSAGE_RECEIVED)
    assert received["queue_id"] == queue_id and received["recipients"] == 2
    counts = receive.counters.snapshot()["counters"]
    assert counts['mailgate_messages_received_total{source="smtp"}'] == 1
    assert receive.committing == 0


def test_the_null_sender_is_queued_as_empty(receive: ReceiveHandler, queue: Stage) -> None:
    reply = data(receive, session(), envelope_to(receive, ALICE, sender="<>"))
    assert queue.history(reply.rsplit(" ", 1)[1]).sender == ""


def test_a_queue_that_does_not_answer_in_time_gets_451_and_an_event(
    tmp_path: Path, queue: Stage
) -> None:
    stuck = Committer(queue.backend, queue.events)  # its thread never runs: no commit ever
    store = QueueStore(queue.backend, stuck)
    slow = handler(tmp_path, store, queue.events, commit_timeout="0.2s")
    reply = data(slow, session(), envelope_to(slow, ALICE))
    assert reply == "451 4.3.0 Queue is not answering, try again later"
    [failed] = queue.seen.of(catalog.STORE_FAILED_RECEIVE)
    assert failed["error"] == "commit timed out" and failed["reply"] == reply
    assert queue.seen.of(catalog.MESSAGE_RECEIVED) == [] and slow.committing == 0


def test_a_message_with_8bit_headers_is_refused_and_nothing_is_queued(
    tmp_path: Path, queue: Stage
) -> None:
    strict = handler(tmp_path, queue.store, queue.events, reject_8bit_headers=True)
    envelope = envelope_to(strict, ALICE)
    envelope.original_content = "Subject: caf\u00e9\r\n\r\nbody\r\n".encode()
    reply = data(strict, session(), envelope)
    assert reply.startswith("5"), reply
    [refused] = queue.seen.of(catalog.MESSAGE_REFUSED)
    assert refused["reply"] == reply and refused["client"] == "client.example.org [127.0.0.1]"
    assert queue.seen.of(catalog.MESSAGE_RECEIVED) == []
    reader = queue.store.reader()
    assert reader.counts().by_state == {}
    reader.close()


def test_rcpt_policy_unknown_mailbox_relay_and_a_recipient_given_twice(
    receive: ReceiveHandler, queue: Stage
) -> None:
    envelope = Envelope()
    assert rcpt(receive, ALICE, session(), envelope) == "250 2.1.5 Ok"
    assert rcpt(receive, ALICE.upper(), session(), envelope) == "250 2.1.5 Ok"
    assert envelope.rcpt_tos == [ALICE], "the same mailbox twice is delivered once"
    unknown = rcpt(receive, "carol@po1.net1.po.test", session(), envelope)
    assert unknown.startswith("550 5.1.1") and "no mailbox" in unknown
    denied = rcpt(receive, "victim@elsewhere.org", session(OUTSIDER), envelope)
    assert denied == "554 5.7.1 <victim@elsewhere.org>: Relay access denied"
    [event] = queue.seen.of(catalog.RELAY_DENIED)
    assert event["client"] == f"client.example.org [{OUTSIDER}]"
    assert [e["reply"] for e in queue.seen.of(catalog.INVALID_RECIPIENT)] == [unknown]
    outsider = session(OUTSIDER, authenticated=True)
    assert rcpt(receive, "victim@elsewhere.org", outsider, envelope) == "250 2.1.5 Ok"
    assert envelope.rcpt_tos == [ALICE, "victim@elsewhere.org"], "authenticated: may relay"
    counts = receive.counters.snapshot()["counters"]
    assert counts["mailgate_smtp_recipients_rejected_total"] == 2


def test_rcpt_refuses_past_max_recipients_and_bad_addresses(tmp_path: Path, queue: Stage) -> None:
    few = handler(tmp_path, queue.store, queue.events, max_recipients=1)
    envelope = Envelope()
    assert rcpt(few, ALICE, session(), envelope) == "250 2.1.5 Ok"
    assert rcpt(few, "x@elsewhere.org", session(), envelope).startswith("452 4.5.3")
    fresh = Envelope()
    assert rcpt(few, "b\u00f6b@elsewhere.org", session(), fresh).startswith("553 5.6.7")
    assert fresh.rcpt_tos == []


def test_mail_refuses_a_non_ascii_sender_without_smtputf8(receive: ReceiveHandler) -> None:
    envelope = Envelope()
    assert mail(receive, "j\u00f6rg@example.org", envelope).startswith("553 5.6.7")
    assert envelope.mail_from is None
    assert mail(receive, "<>", envelope) == "250 2.1.0 Ok"


def test_ehlo_advertises_pipelining_and_no_empty_auth(receive: ReceiveHandler) -> None:
    responses = ["250-mx.test", "250-SIZE 1000", "250-AUTH", "250 HELP"]
    where = session()
    answer = asyncio.run(receive.handle_EHLO(None, where, Envelope(), "c.example.org", responses))  # type: ignore[arg-type]
    assert answer == [
        "250-mx.test", "250-SIZE 1000", "250-PIPELINING", "250-CHUNKING",
        "250-ENHANCEDSTATUSCODES", "250 HELP",
    ]  # fmt: skip
    assert where.host_name == "c.example.org"


def test_sessions_per_address_are_limited_and_given_back(tmp_path: Path, queue: Stage) -> None:
    limited = handler(tmp_path, queue.store, queue.events, max_sessions_per_ip=1)
    assert limited.admit(OUTSIDER) is None
    refusal = limited.admit(OUTSIDER)
    assert refusal is not None and refusal.startswith("421")
    assert limited.admit("192.0.2.8") is None, "another address has its own allowance"
    [event] = queue.seen.of(catalog.SESSION_REFUSED)
    assert event["client"] == f"[{OUTSIDER}]" and event["reply"] == refusal
    limited.release(OUTSIDER)
    assert limited.admit(OUTSIDER) is None


def test_auth_checks_the_credentials_and_throttles_an_address_that_keeps_failing(
    tmp_path: Path, queue: Stage
) -> None:
    users = Credentials(tmp_path / "users")
    users.set("joe", "right horse")
    auth = handler(tmp_path, queue.store, queue.events, credentials=users, auth_failures=2)
    where = session(OUTSIDER)

    def login(password: str) -> Any:
        given = LoginPassword(b"joe", password.encode())
        return auth.authenticate(None, where, Envelope(), "PLAIN", given)  # type: ignore[arg-type]

    assert login("right horse").success
    assert not login("wrong").success and not login("wrong again").success
    throttled = login("right horse")
    assert not throttled.success and throttled.message.startswith("454 4.7.0")
    assert [e["why"] for e in queue.seen.of(catalog.AUTH_FAILED)] == [
        "invalid credentials", "invalid credentials", "too many failures",
    ]  # fmt: skip
    assert queue.seen.of(catalog.AUTH_SUCCEEDED) == [{"user": "joe", "client": where_name(where)}]
    assert all("right horse" not in str(fields) for _, fields in queue.seen.items)


def where_name(where: Session) -> str:
    return f"{where.host_name} [{where.peer[0]}]"


def test_an_inline_commits_wake_up_counters_and_event_wait_for_the_deferred_turn(
    receive: ReceiveHandler, queue: Stage
) -> None:
    """Issue 14: at one session, the wake-ups, counters and event 3000 of a commit stood
    between the fdatasync and the 250. Given `defer` (the loop's call_soon), they are handed
    to it and the reply is ready first; nothing of them is lost, only later."""
    queue.store.inline = InlineWriter(queue.backend, queue.events)
    envelope = envelope_to(receive, ALICE)
    prepared = receive.message(receive.protocol(), session(), envelope)
    assert isinstance(prepared, NewMessage)
    deferred: list[Callable[[], None]] = []
    woken = queue.wakeup.generation("postoffice")
    done = receive.commit_now(prepared, deferred.append)
    assert done is not None and done.exception() is None, "committed inline, durable"
    reply = receive.durable(prepared, None, deferred.append)
    assert reply == f"250 2.0.0 Ok: queued as {prepared.queue_id}"
    assert queue.wakeup.generation("postoffice") == woken, "no wake-up before the reply"
    assert not queue.seen.of(catalog.MESSAGE_RECEIVED), "no event 3000 before the reply"
    assert len(deferred) == 2, "the commit's effects, then the 250's bookkeeping"
    for later in deferred:
        later()
    assert queue.wakeup.generation("postoffice") > woken, "the postoffice is woken after"
    [received] = queue.seen.of(catalog.MESSAGE_RECEIVED)
    assert received["queue_id"] == prepared.queue_id


def test_without_defer_the_commits_effects_come_at_once(
    receive: ReceiveHandler, queue: Stage
) -> None:
    queue.store.inline = InlineWriter(queue.backend, queue.events)
    prepared = receive.message(receive.protocol(), session(), envelope_to(receive, ALICE))
    assert isinstance(prepared, NewMessage)
    woken = queue.wakeup.generation("postoffice")
    done = receive.commit_now(prepared)
    assert done is not None and done.exception() is None
    assert receive.durable(prepared, None).startswith("250 2.0.0")
    assert queue.wakeup.generation("postoffice") > woken
    assert len(queue.seen.of(catalog.MESSAGE_RECEIVED)) == 1


def test_a_commit_flushed_after_the_writer_lock_is_counted_as_inline_unlocked(
    receive: ReceiveHandler, queue: Stage
) -> None:
    inline = queue.store.inline = InlineWriter(queue.backend, queue.events)
    holder = queue.backend.connect()
    holder.begin()  # another writer, at every attempt, until the inline writer counts it
    try:
        while inline._contention <= CONTENDED:
            assert inline.try_submit("probe", lambda c: None) is None
    finally:
        holder.rollback()
        holder.close()
    for _ in range(2):
        prepared = receive.message(receive.protocol(), session(), envelope_to(receive, ALICE))
        assert isinstance(prepared, NewMessage)
        done = receive.commit_now(prepared)
        assert done is not None and done.exception() is None
    counts = receive.counters.snapshot()["counters"]
    assert counts['mailgate_smtp_commits_total{path="inline-unlocked"}'] == 2
    assert 'mailgate_smtp_commits_total{path="inline"}' not in counts


def test_a_failure_after_the_250_is_event_3004_not_a_line_in_asyncios_log(
    receive: ReceiveHandler, queue: Stage
) -> None:
    """What a 250 defers runs as a loop callback, where an exception would only reach
    asyncio's own log: `guarded` turns it into event 3004 and lets the loop go on."""
    deferred: list[Callable[[], None]] = []
    defer = receive.guarded(deferred.append)
    ran: list[str] = []
    defer(lambda: ran.append("first"))

    def broken() -> None:  # as a bug in a counter or an event sink would be
        raise IndexError("no such counter")

    defer(broken)
    for later in deferred:
        later()  # none raises
    assert ran == ["first"]
    [error] = queue.seen.of(catalog.SESSION_ERROR)
    assert "IndexError" in error["error"]


def test_only_a_lone_session_lingers_after_its_replies(tmp_path: Path, queue: Stage) -> None:
    """[smtp] reply_linger (receive/linger.py): the spin after a reply would hold up every
    other session of the process, so it is for the process's only one, and off at 0."""
    lingering = handler(tmp_path, queue.store, queue.events)
    assert lingering.settings.reply_linger == pytest.approx(0.0002)
    assert not lingering.lone_session()
    assert lingering.admit("127.0.0.1") is None
    assert lingering.lone_session()
    assert lingering.admit("127.0.0.2") is None
    assert not lingering.lone_session(), "two sessions: neither spins"
    lingering.release("127.0.0.2")
    assert lingering.lone_session()
    off = handler(tmp_path, queue.store, queue.events, reply_linger="0s")
    assert off.admit("127.0.0.1") is None and not off.lone_session()


def test_a_session_alone_in_its_worker_but_not_in_the_instance_does_not_linger(
    tmp_path: Path, queue: Stage
) -> None:
    """The kernel spreads sessions over the receive workers: two workers with one session
    each must both see two, or each would spin a core away from the other's session."""
    board = SessionBoard.create(2)
    one = handler(tmp_path, queue.store, queue.events, board=SessionBoard(board.fd, 2, 0))
    two = handler(tmp_path, queue.store, queue.events, board=SessionBoard(board.fd, 2, 1))
    assert one.admit("127.0.0.1") is None and one.lone_session()
    assert two.admit("127.0.0.1") is None
    assert not one.lone_session() and not two.lone_session()
    one.release("127.0.0.1")
    assert two.lone_session()
