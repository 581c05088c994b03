"""The registry of what each interchange thread delivers now (pure logic, a stand-in session)."""

from mailgate.interchange.inflight import CANCELLED_REPLY, InFlight

OWNER = "mx.test:1:smarthost-1:1:"


class Session:
    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def cancel(self, queue_id: str) -> str:
        self.cancelled.append(queue_id)
        return "broken"


def test_a_cancelled_message_is_stopped_skipped_or_left_to_its_record() -> None:
    registry, session = InFlight(), Session()
    with registry.batch(OWNER, "smarthost-1", session, ["A", "B", "C"]):
        assert registry.enter(OWNER, "A")
        registry.leave(OWNER)
        assert registry.enter(OWNER, "B")
        [done] = registry.cancel("A", [OWNER])
        assert done.how == "already attempted; its outcome is being recorded"
        [now] = registry.cancel("B", [OWNER, "someone-else"])
        assert (now.thread, now.how, session.cancelled) == ("smarthost-1", "broken", ["B"])
        registry.leave(OWNER)
        [later] = registry.cancel("C", [OWNER])
        assert later.how == "not started yet: skipped"
        assert not registry.enter(OWNER, "C"), "skipped"
        assert registry.cancel("Z", [OWNER]) == [], "not in this batch"
    assert registry.cancel("B", [OWNER]) == [], "the batch is over: its record is submitted"
    assert registry.enter(OWNER, "C"), "outside a batch nothing is cancelled"


def test_a_session_that_cannot_be_interrupted_is_named_so() -> None:
    registry = InFlight()
    with registry.batch(OWNER, "postoffice-1", object(), ["A"]):
        registry.enter(OWNER, "A")
        [item] = registry.cancel("A", [OWNER])
        assert item.how == "cannot be interrupted: its outcome will be discarded"


def test_the_command_says_what_became_of_each_attempt() -> None:
    from mailgate.cli.inflight import _fate
    from mailgate.queue.revoke import Revoked

    taken = Revoked(7, "Q", "bob@po1.net1.example.test", "postoffice", "h:1:postoffice-2:3:", 0)
    assert taken.thread == "postoffice-2"
    texts = {
        fate.fate: fate.text("hold")
        for fate in (
            _fate(taken, ("deferred", CANCELLED_REPLY), 5.0),
            _fate(taken, ("delivered", "250 2.0.0 delivered to MS:NET1/PO1/BOB"), 5.0),
            _fate(taken, ("deferred", "451 4.3.0 mailbox unavailable"), 5.0),
            _fate(taken, None, 5.0),
        )
    }
    assert texts == {
        "cancelled": "an attempt in progress on postoffice-2 was cancelled",
        "delivered": "<bob@po1.net1.example.test> was already delivered by an attempt in "
        "progress on postoffice-2 (250 2.0.0 delivered to MS:NET1/PO1/BOB); the queue records "
        "it delivered",
        "ended": "an attempt in progress on postoffice-2 ended (451 4.3.0 mailbox unavailable); "
        "its outcome was discarded",
        "running": "an attempt in progress on postoffice-2 did not end within 5s; its outcome "
        "will be discarded (a delivery it still completes is recorded as delivered, never "
        "repeated)",
    }
    assert "may still receive" in _fate(taken, None, 5.0).text("delete")
