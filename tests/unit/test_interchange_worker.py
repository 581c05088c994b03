"""interchange/worker.py's InterchangeThread, driven in-process by a scripted connector (the
interface of interchange/connector.py) over a real SQLite queue and its group committer:
claims grouped by message, each outcome recorded as its kind, a failed flush, the loop
limit, leases of an earlier life, recycling; the thread survives a connector's bug."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mailgate.errors import PermanentFailure, TemporaryFailure
from mailgate.interchange import worker as worker_module
from mailgate.interchange.connector import ConnectorSession, Result
from mailgate.interchange.state import ConnectorState
from mailgate.interchange.worker import InterchangeThread, lease_owner
from mailgate.model import Claim, Disposition
from mailgate.observe import catalog, metrics
from mailgate.observe.counters import Counters
from tests.support.process import wait_for
from tests.support.stage import Stage, stage

HOST = "mx.test"
WAIT = 10.0


class Scripted:
    """A connector whose sessions answer each recipient from `answers` (a Result, or an
    exception to raise for the whole message); anyone else is delivered."""

    name = "postoffice"

    def __init__(self) -> None:
        self.answers: dict[str, Result | Exception] = {}
        self.calls: list[list[str]] = []
        self.flush_error: Exception | None = None
        self.opened = self.closed = 0
        self.batches: list[tuple[float, list[str]]] = []  # each flush: when, what it covered
        self._since_flush: list[str] = []
        self.delivered_by: list[str] = []  # the thread of each deliver call
        self.delay = 0.0  # seconds each deliver call takes
        self.hold: dict[str, threading.Event] = {}  # a delivery to it waits for its event

    def open(self) -> ConnectorSession:
        self.opened += 1
        return _Session(self)


class _Session:
    def __init__(self, connector: Scripted) -> None:
        self.connector = connector

    def deliver(self, claims: Sequence[Claim], body: bytes) -> list[Result]:
        addresses = [c.address for c in claims]
        self.connector.delivered_by.append(threading.current_thread().name)
        time.sleep(self.connector.delay)  # a slow delivery, for tests that need overlap
        for address in addresses:
            if address in self.connector.hold:
                self.connector.hold[address].wait(WAIT)  # a stuck delivery
        self.connector.calls.append(addresses)
        self.connector._since_flush += addresses
        results = []
        for address in addresses:
            answer = self.connector.answers.get(address, Result(Disposition.DELIVERED, "250 ok"))
            if isinstance(answer, Exception):
                raise answer
            results.append(answer)
        return results

    def flush(self) -> None:
        self.connector.batches.append((time.monotonic(), self.connector._since_flush))
        self.connector._since_flush = []
        if self.connector.flush_error is not None:
            raise self.connector.flush_error

    def close(self) -> None:
        self.connector.closed += 1


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Stage]:
    with stage(tmp_path) as made:
        yield made


def worker(queue: Stage, connector: Scripted, **kw: object) -> InterchangeThread:
    return InterchangeThread(
        connector, queue.store, queue.wakeup, queue.events, node=HOST, batch=10, **kw
    )  # type: ignore[arg-type]


def settled(queue: Stage, queue_id: str, *states: str) -> dict[str, str]:
    """Wait until every recipient of `queue_id` is in one of `states`; their states."""
    return wait_for(
        lambda: (found := queue.states(queue_id)) and set(found.values()) <= set(states) and found,
        WAIT,
        what=f"{queue_id} in {states}",
    )


def test_a_messages_recipients_go_in_one_call_and_are_recorded_delivered(queue: Stage) -> None:
    connector, counters = Scripted(), Counters()
    body = worker(queue, connector, counters=counters)
    handle = queue.run(body)
    both = queue.enqueue("a@x.test", "b@x.test")
    one = queue.enqueue("c@x.test")
    assert settled(queue, both, "delivered") == {"a@x.test": "delivered", "b@x.test": "delivered"}
    settled(queue, one, "delivered")
    assert sorted(connector.calls) == [["a@x.test", "b@x.test"], ["c@x.test"]]
    wait_for(lambda: len(queue.seen.of(catalog.MESSAGE_DONE)) == 2, WAIT, what="4003 twice")
    sent = queue.seen.of(catalog.SENT)
    assert sorted(f["recipient"] for f in sent) == ["a@x.test", "b@x.test", "c@x.test"]
    assert all(f["connector"] == "postoffice" and f["reply"] == "250 ok" for f in sent)
    assert body.state.delivered == 3 and body.state.attempts == 3
    key = 'mailgate_attempts_total{connector="postoffice",outcome="delivered"}'
    assert key.startswith(metrics.ATTEMPTS.name) and counters.snapshot()["counters"][key] == 3
    queue.stop(handle)
    assert (connector.opened, connector.closed) == (1, 1), "one session per life, closed"


def test_each_failure_ends_as_its_kind_and_a_connector_bug_is_not_the_end_of_the_thread(
    queue: Stage,
) -> None:
    connector = Scripted()
    connector.answers = {
        "later@x.test": TemporaryFailure("451 4.2.1 try later"),
        "never@x.test": PermanentFailure("550 5.1.1 no such user"),
        "bug@x.test": RuntimeError("connector bug"),
        "said-no@x.test": Result(Disposition.FAILED, "554 5.7.1 refused"),
    }
    body = worker(queue, connector)
    queue.run(body)
    ids = {a: queue.enqueue(a) for a in [*connector.answers, "fine@x.test"]}
    assert settled(queue, ids["later@x.test"], "deferred")
    assert settled(queue, ids["never@x.test"], "bounced")
    assert settled(queue, ids["said-no@x.test"], "bounced")
    assert settled(queue, ids["bug@x.test"], "deferred"), "an internal error is retried"
    assert settled(queue, ids["fine@x.test"], "delivered"), "the thread went on"
    [bug] = queue.seen.of(catalog.PROCESSING_FAILED)
    assert bug["recipient"] == "bug@x.test" and "connector bug" in bug["error"]
    assert bug["failures"] == 1 and "RuntimeError" in bug["traceback"]
    wait_for(lambda: len(queue.seen.of(catalog.DEFERRED)) == 2, WAIT, what="two 2400")
    replies = {f["recipient"]: f["reply"] for f in queue.seen.of(catalog.DEFERRED)}
    assert replies["later@x.test"] == "451 4.2.1 try later"
    assert replies["bug@x.test"].startswith("451 4.3.0 internal error")
    bounced = {f["recipient"]: f["reply"] for f in queue.seen.of(catalog.BOUNCED)}
    assert bounced == {
        "never@x.test": "550 5.1.1 no such user",
        "said-no@x.test": "554 5.7.1 refused",
    }
    wait_for(lambda: body.state.attempts == 5, WAIT, what="five attempts reported")
    assert (body.state.delivered, body.state.deferred, body.state.bounced) == (1, 2, 2)


def test_a_batch_whose_flush_fails_counts_nothing_as_delivered(queue: Stage) -> None:
    connector = Scripted()
    connector.flush_error = TemporaryFailure("451 4.3.0 fsync failed")
    queue.run(worker(queue, connector))
    queue_id = queue.enqueue("a@x.test", "b@x.test")
    assert settled(queue, queue_id, "deferred") == {"a@x.test": "deferred", "b@x.test": "deferred"}
    assert connector.calls == [["a@x.test", "b@x.test"]], "delivered, then not made durable"
    assert queue.seen.of(catalog.SENT) == []
    wait_for(lambda: len(queue.seen.of(catalog.DEFERRED)) == 2, WAIT, what="two 2400")
    assert {f["reply"] for f in queue.seen.of(catalog.DEFERRED)} == {"451 4.3.0 fsync failed"}


def test_a_message_past_max_received_bounces_without_reaching_the_connector(
    queue: Stage,
) -> None:
    connector = Scripted()
    queue.run(worker(queue, connector, max_received=2))
    hops = b"".join(b"Received: from hop%d by mx.test; now\r\n" % i for i in range(3))
    looping = queue.enqueue("a@x.test", body=hops + b"Subject: loop\r\n\r\nbody\r\n")
    fine = queue.enqueue("b@x.test", body=hops[: hops.index(b"Received", 1)] + b"\r\nbody\r\n")
    settled(queue, looping, "bounced")
    settled(queue, fine, "delivered")
    assert connector.calls == [["b@x.test"]], "the looping message never reached it"
    [bounce] = queue.seen.of(catalog.BOUNCED)
    assert bounce["reply"].startswith("554 5.4.6 Too many hops: 3")


def test_leases_an_earlier_life_held_are_ended_at_start_and_their_mail_retried(
    queue: Stage,
) -> None:
    queue_id = queue.enqueue("a@x.test")
    earlier = lease_owner(HOST, "t-1", 1)
    [claim] = queue.store.claim("postoffice", earlier, 10).result(WAIT)
    assert claim.attempts == 1
    assert queue.states(queue_id) == {"a@x.test": "active"}, "held by the life that died"
    connector = Scripted()
    queue.run(worker(queue, connector), name="t-1", generation=2)
    settled(queue, queue_id, "delivered")
    [released] = queue.seen.of(catalog.LEASES_RELEASED)
    assert released["count"] == 1 and "left by t-1 before restart" in released["why"]
    [recipient] = queue.history(queue_id).recipients
    assert recipient.attempts == 2, "the attempt the dead life left counts"
    [sent] = queue.seen.of(catalog.SENT)
    assert sent["attempts"] == 2


def test_another_threads_leases_are_not_taken_at_start(queue: Stage) -> None:
    queue_id = queue.enqueue("a@x.test")
    queue.store.claim("postoffice", lease_owner(HOST, "t-10", 1), 10).result(WAIT)
    handle = queue.run(worker(queue, Scripted()), name="t-1", generation=2)
    wait_for(lambda: handle.state.value == "idle", WAIT, what="the thread idle")
    assert queue.seen.of(catalog.LEASES_RELEASED) == [], "'t-1:' does not prefix 't-10:'"
    assert queue.states(queue_id) == {"a@x.test": "active"}


def test_a_thread_asks_to_be_recycled_after_its_attempts_and_records_its_last_batch(
    queue: Stage,
) -> None:
    connector = Scripted()
    ids = [queue.enqueue(f"u{i}@x.test") for i in range(3)]
    body = InterchangeThread(
        connector, queue.store, queue.wakeup, queue.events, node=HOST, batch=1,
        recycle_after=2, state=ConnectorState("postoffice"),
    )  # fmt: skip
    handle = queue.run(body)
    wait_for(lambda: handle.recycle, WAIT, what="the recycle request")
    wait_for(lambda: connector.closed == 1, WAIT, what="the session closed as the body ended")
    states = [queue.states(i) for i in ids]
    assert [s for s in states if set(s.values()) == {"delivered"}] == states[:2]
    assert set(states[2].values()) == {"queued"}, "left for the fresh thread"
    assert body.state.delivered == 2 and body.state.attempts == 2


def test_after_a_partial_batch_a_thread_lingers_so_the_next_messages_share_one_batch(
    queue: Stage,
) -> None:
    """Issue 14: at one message at a time every batch was a batch of one, each with its own
    claim, record and mailbox-directory flush. After a claim that found a partial batch
    the thread waits out `linger` before it claims again; the first message after an idle
    spell still goes at once."""
    connector = Scripted()
    handle = queue.run(worker(queue, connector, linger=1.5))
    began = time.monotonic()
    first = queue.enqueue("first@x.test")
    settled(queue, first, "delivered")
    assert connector.batches[0][0] - began < 1.0, "the first message after idling is not held"
    rest = [queue.enqueue(f"r{i}@x.test") for i in range(3)]  # while the thread lingers
    for queue_id in rest:
        settled(queue, queue_id, "delivered")
    assert [addresses for _, addresses in connector.batches] == [
        ["first@x.test"],
        ["r0@x.test", "r1@x.test", "r2@x.test"],
    ], "the three that came during the linger went in one batch"
    assert connector.batches[1][0] - connector.batches[0][0] >= 1.0, "it lingered"
    queue.stop(handle)


def test_a_full_batch_is_followed_by_the_next_claim_at_once_and_a_stop_ends_a_linger(
    queue: Stage,
) -> None:
    connector = Scripted()
    ids = [queue.enqueue(f"u{i}@x.test") for i in range(5)]
    body = InterchangeThread(
        connector, queue.store, queue.wakeup, queue.events, node=HOST, batch=2, linger=30.0
    )
    handle = queue.run(body)
    for queue_id in ids[:4]:  # two full batches: no linger between them
        settled(queue, queue_id, "delivered")
    assert [len(addresses) for _, addresses in connector.batches[:2]] == [2, 2]
    settled(queue, ids[4], "delivered")  # after the last full batch, a partial one at once
    assert set(queue.states(ids[4]).values()) == {"delivered"}
    began = time.monotonic()
    queue.stop(handle)  # it lingers 30 s after that partial batch: the stop ends that
    assert time.monotonic() - began < 10.0


def test_a_connectors_threads_share_one_linger(queue: Stage) -> None:
    """Two threads of one connector (one body runs in each, as delivery.py spawns them):
    while one lingers after a partial batch, the other must not take the next message
    alone. Regression: each thread lingered on its own, so with the smarthost's two
    threads the idle one claimed every new message at once and batches stayed of one."""
    connector = Scripted()
    body = worker(queue, connector, linger=1.5)
    first_thread = queue.run(body, name="t-1")
    second_thread = queue.run(body, name="t-2")
    first = queue.enqueue("first@x.test")
    settled(queue, first, "delivered")
    rest = [queue.enqueue(f"r{i}@x.test") for i in range(3)]  # both threads idle or lingering
    for queue_id in rest:
        settled(queue, queue_id, "delivered")
    assert [addresses for _, addresses in connector.batches] == [
        ["first@x.test"],
        ["r0@x.test", "r1@x.test", "r2@x.test"],
    ], "the idle thread waited out the other's linger too"
    assert connector.batches[1][0] - connector.batches[0][0] >= 1.0
    queue.stop(first_thread)
    queue.stop(second_thread)


def test_regression_a_second_postoffice_thread_took_messages_at_one_at_a_time(
    queue: Stage,
) -> None:
    """Issue 14: with two postoffice threads, one message at a time cost a fifth more CPU
    per message than with one (`bench/ab.py --sessions 1 --deliver --set 'postoffice:
    threads = 2'`: 1.830 against 1.527 ms), each new message waking the idle thread. With
    `helpers_on_backlog` the second thread is woken only by a backlog: here, never."""
    connector = Scripted()
    body = worker(queue, connector, linger=0.01, helpers_on_backlog=True)
    first_thread = queue.run(body, name="t-1")
    second_thread = queue.run(body.helper(), name="t-2")
    for i in range(6):
        settled(queue, queue.enqueue(f"one{i}@x.test"), "delivered")
    assert connector.delivered_by == ["t-1"] * 6
    queue.stop(second_thread)  # asleep on the backlog's wake-up: a stop ends that
    queue.stop(first_thread)


def test_a_backlog_wakes_the_helpers_and_they_deliver_beside_the_first_thread(
    queue: Stage,
) -> None:
    connector = Scripted()
    connector.delay = 0.05  # 10 recipients a batch: half a second each, so they overlap
    ids = [queue.enqueue(f"b{i}@x.test") for i in range(40)]
    body = worker(queue, connector, helpers_on_backlog=True)
    threads = [queue.run(body, name="t-1"), queue.run(body.helper(), name="t-2")]
    for queue_id in ids:
        settled(queue, queue_id, "delivered")
    assert {"t-1", "t-2"} <= set(connector.delivered_by), connector.delivered_by
    assert sorted(a for call in connector.calls for a in call) == sorted(
        f"b{i}@x.test" for i in range(40)
    ), "each recipient delivered once"
    for handle in threads:
        queue.stop(handle)


def test_a_helper_alone_still_delivers_by_its_poll(
    queue: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the first thread is stuck (or gone), what waits is claimed by a helper's poll,
    every IDLE_WAIT seconds, without any backlog wake-up."""
    monkeypatch.setattr(worker_module, "IDLE_WAIT", 0.2)
    connector = Scripted()
    body = worker(queue, connector, helpers_on_backlog=True)
    helper = queue.run(body.helper(), name="t-2")
    queue_id = queue.enqueue("alone@x.test")
    settled(queue, queue_id, "delivered")
    assert connector.delivered_by == ["t-2"]
    queue.stop(helper)


def test_regression_new_mail_waited_for_a_stuck_first_thread(
    queue: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first thread stuck in one batch (a hung mailbox) must not hold up the mail that
    comes meanwhile: once it has been in its batch for STUCK_AFTER, new mail's wake-ups
    spill over to a helper (not its poll: IDLE_WAIT is a minute here). Regression: with
    the helpers waiting for a backlog alone, a released delivery waited behind a stuck
    thread (tests/e2e/test_admin_command_takes_effect.py, test_kb_q237182)."""
    monkeypatch.setattr(worker_module, "IDLE_WAIT", 60.0)
    monkeypatch.setattr(worker_module, "STUCK_AFTER", 0.2)
    connector = Scripted()
    gate = connector.hold["stuck@x.test"] = threading.Event()
    body = worker(queue, connector, linger=0.01, helpers_on_backlog=True)
    threads = [queue.run(body, name="t-1"), queue.run(body.helper(), name="t-2")]
    stuck = queue.enqueue("stuck@x.test")
    wait_for(lambda: body._first_stuck(), WAIT, what="the first thread stuck")
    later = queue.enqueue("later@x.test")
    settled(queue, later, "delivered")
    assert connector.delivered_by == ["t-1", "t-2"]
    gate.set()
    settled(queue, stuck, "delivered")
    for handle in threads:
        queue.stop(handle)


def test_the_postoffice_asks_for_backlog_helpers_and_the_smarthost_does_not() -> None:
    """delivery.py passes the connector's own `helpers_on_backlog` to its threads."""
    from mailgate.connectors.postoffice import PostofficeConnector
    from mailgate.connectors.smtp import SmarthostConnector

    assert PostofficeConnector.helpers_on_backlog is True
    assert getattr(SmarthostConnector, "helpers_on_backlog", False) is False
