"""The registry of what each interchange thread delivers now (pure logic, a stand-in session)."""

from mailgate.interchange.inflight import InFlight

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
