"""receive/pickup.py's Pickup, scanning real outbox directories in tmp_path into a real SQLite
queue: settled files queued and removed, files still being written left alone, unsendable
ones to badmail with their reason, symlinks never followed, the batch limit, and recovery of
files a crash left taken (queued once, never twice)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import parse_config
from mailgate.config.schema import RELAY_CONNECTORS
from mailgate.observe import catalog
from mailgate.observe.counters import Counters
from mailgate.postoffice.address import PostofficeAddress
from mailgate.receive.pickup import WORK, Pickup
from mailgate.route.policy import RecipientPolicy, postoffice_verifier
from mailgate.service.wiring import address_map, router
from tests.support.stage import Stage, stage

ALICE = "alice@po1.net1.po.test"  # MS:NET1/PO1/ALICE, the one mailbox here
LETTER = b"X-Sender: bob@po1.net1.po.test\r\nX-Receiver: MS:NET1/PO1/ALICE\r\n" + (
    b"Subject: from the outbox\r\n\r\nhello\r\n"
)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Stage]:
    with stage(tmp_path / "q") as made:
        yield made


def pickup(tmp_path: Path, queue: Stage, **settings: Any) -> Pickup:
    config = parse_config(
        {
            "service": {"hostname": "mx.test", "data_dir": str(tmp_path)},
            "postoffice": {"domain": "po.test"},
            "smarthost": {"host": "127.0.0.1", "port": 2626},
            "pickup": {"settle": "60s", **settings},
        }
    )
    mailboxes = {PostofficeAddress("NET1", "PO1", "ALICE")}
    policy = RecipientPolicy(
        router(config, address_map(config)),
        {"postoffice": postoffice_verifier(mailboxes.__contains__)},
        relay_connectors=RELAY_CONNECTORS,
    )
    return Pickup(
        config.postoffice_root,
        config.badmail_dir,
        config.pickup,
        queue.store,
        policy,
        address_map(config),
        queue.events,
        Counters(),
        max_size=1000,
        hostname="mx.test",
    )


def drop(taker: Pickup, name: str, data: bytes, *, age: float = 120.0) -> Path:
    """A file in NET1/PO1's outbox, last written `age` seconds ago."""
    outbox = taker.root / "NET1" / "PO1" / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / name
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def outbox(taker: Pickup) -> Path:
    return taker.root / "NET1" / "PO1" / "outbox"


def test_a_settled_file_is_queued_with_its_envelope_and_then_removed(
    tmp_path: Path, queue: Stage
) -> None:
    taker = pickup(tmp_path, queue)
    path = drop(taker, "letter.eml", LETTER)
    assert list(taker.outboxes()) == [outbox(taker)]
    assert taker.scan(outbox(taker)) == 1
    assert not path.exists() and list((outbox(taker) / WORK).iterdir()) == []
    [event] = queue.seen.of(catalog.PICKED_UP)
    assert (event["file"], str(event["outbox"])) == ("letter.eml", "NET1/PO1/outbox")
    found = queue.history(event["queue_id"])
    assert found.sender == "bob@po1.net1.po.test" and found.client == "pickup NET1/PO1"
    assert [(r.address, r.connector, r.state) for r in found.recipients] == [
        (ALICE, "postoffice", "queued")
    ]
    assert found.origin is not None and found.origin.startswith("pickup:NET1/PO1/outbox/.work/")
    reader = queue.store.reader()
    body = reader.body(event["queue_id"])
    reader.close()
    assert body is not None and body.startswith(b"Received: by mx.test (mailgate pickup from ")
    assert b"X-Sender" not in body and b"Subject: from the outbox" in body
    counts = taker.counters.snapshot()["counters"]
    assert counts['mailgate_messages_received_total{source="pickup"}'] == 1


def test_a_file_still_being_written_is_left_until_it_settles(tmp_path: Path, queue: Stage) -> None:
    taker = pickup(tmp_path, queue)
    path = drop(taker, "growing.eml", LETTER, age=0)
    assert taker.scan(outbox(taker)) == 0
    assert path.exists() and queue.seen.of(catalog.PICKED_UP) == []
    then = time.time() - 120
    os.utime(path, (then, then))
    assert taker.scan(outbox(taker)) == 1 and not path.exists()


def test_a_file_that_cannot_be_sent_goes_to_badmail_beside_its_reason(
    tmp_path: Path, queue: Stage
) -> None:
    taker = pickup(tmp_path, queue)
    drop(taker, "nobody.eml", b"Subject: no recipient\r\n\r\nbody\r\n")
    drop(taker, "huge.eml", LETTER + b"x" * 1000)
    assert taker.scan(outbox(taker)) == 0
    assert list(outbox(taker).glob("*.eml")) == [], "neither stays in the outbox"
    reasons = {p.name: p.read_text() for p in taker.badmail.iterdir() if p.name.endswith(".reason")}
    assert len(reasons) == 2 and len(list(taker.badmail.iterdir())) == 4, "each beside its file"
    huge = next(text for name, text in reasons.items() if "huge" in name)
    assert "file: NET1/PO1/outbox/huge.eml" in huge
    assert "larger than the message size limit of 1000 bytes" in huge
    events = {e["file"]: e["reason"] for e in queue.seen.of(catalog.PICKUP_BADMAIL)}
    assert set(events) == {"nobody.eml", "huge.eml"} and "1000 bytes" in events["huge.eml"]
    assert queue.seen.of(catalog.PICKED_UP) == []


def test_an_unknown_recipient_is_bounced_at_once_and_the_others_queued(
    tmp_path: Path, queue: Stage
) -> None:
    taker = pickup(tmp_path, queue)
    letter = LETTER.replace(
        b"X-Receiver: MS:NET1/PO1/ALICE\r\n",
        b"X-Receiver: MS:NET1/PO1/ALICE\r\nX-Receiver: MS:NET1/PO1/CAROL\r\n",
    )
    drop(taker, "two.eml", letter)
    assert taker.scan(outbox(taker)) == 1
    [event] = queue.seen.of(catalog.PICKED_UP)
    states = queue.states(event["queue_id"])
    assert states == {ALICE: "queued", "carol@po1.net1.po.test": "bounced"}


def test_symlinks_and_dot_files_in_an_outbox_are_never_taken(tmp_path: Path, queue: Stage) -> None:
    taker = pickup(tmp_path, queue)
    secret = tmp_path / "secret"
    secret.write_bytes(LETTER)
    drop(taker, ".hidden", LETTER)
    (outbox(taker) / "link.eml").symlink_to(secret)
    assert taker.scan(outbox(taker)) == 0
    assert secret.exists() and (outbox(taker) / "link.eml").is_symlink()
    assert queue.seen.of(catalog.PICKED_UP) == []


def test_one_scan_takes_at_most_a_batch(tmp_path: Path, queue: Stage) -> None:
    taker = pickup(tmp_path, queue, batch=2)
    for i in range(3):
        drop(taker, f"m{i}.eml", LETTER)
    assert taker.scan(outbox(taker)) == 2
    assert len(list(outbox(taker).glob("*.eml"))) == 1
    assert taker.scan(outbox(taker)) == 1


def test_recovery_removes_a_taken_file_already_queued_and_queues_one_that_was_not(
    tmp_path: Path, queue: Stage
) -> None:
    taker = pickup(tmp_path, queue)
    drop(taker, "first.eml", LETTER)
    assert taker.scan(outbox(taker)) == 1
    [done] = queue.seen.of(catalog.PICKED_UP)
    origin = queue.history(done["queue_id"]).origin
    assert origin is not None
    # A crash after the commit, before the unlink, leaves the taken file in .work ...
    (taker.root / origin.removeprefix("pickup:")).write_bytes(LETTER)
    # ... and one taken just before a crash was never submitted.
    (outbox(taker) / WORK / "1-1-second.eml").write_bytes(LETTER)
    taker.recover()
    assert list((outbox(taker) / WORK).iterdir()) == []
    picked = queue.seen.of(catalog.PICKED_UP)
    assert [e["file"] for e in picked] == ["first.eml", "1-1-second.eml"], "queued once each"
