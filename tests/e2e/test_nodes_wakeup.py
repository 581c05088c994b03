"""A message accepted on a node that runs no postoffice is delivered by a node that does,
woken over LISTEN/NOTIFY; the accepting node, without the tree, checks no mailbox at RCPT
and picks nothing up. Two single-process nodes on one schema, one shared postoffice root."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodes import make_node, status
from tests.support.process import wait_for
from tests.support.stores import pg_schema

ALICE = "alice@po1.net1.example.test"


@pytest.fixture
def url() -> Iterator[str]:
    with pg_schema() as (_, schema_url):
        yield schema_url


def test_accepted_on_one_node_delivered_by_another(tmp_path: Path, url: str) -> None:
    shared = tmp_path / "postoffice"
    # The front has a tree of its own, empty: it cannot see the office's mailboxes.
    front = make_node(tmp_path / "front", "front", url, postoffice=tmp_path / "elsewhere")
    front.config_path.write_text(
        front.config_path.read_text().replace(
            'node = "front"\n', 'node = "front"\nconnectors = []\n'
        )
    )
    office = make_node(tmp_path / "office", "office", url, postoffice=shared)
    try:
        assert office.cli("db", "upgrade").returncode == 0
        office.add_mailbox("MS:NET1/PO1/ALICE")
        office.start("--single-process")
        front.start("--single-process")
        threads = {t["name"] for p in status(front)["processes"] for t in p["threads"]}
        assert "listen" in threads and not {"postoffice-1", "pickup"} & threads, threads
        wait_for(lambda: all(t.get("state") == "idle" for p in status(office)["processes"]
                             for t in p["threads"] if t["name"].startswith("postoffice-")),
                 20, what="the office's postoffice threads waiting")  # fmt: skip
        with smtplib.SMTP("127.0.0.1", front.port, timeout=30) as client:
            client.sendmail("a@example.org", [ALICE], b"Subject: across\r\n\r\nbody\r\n")
        box = shared / "NET1" / "PO1" / "ALICE" / "new"
        wait_for(lambda: len(list(box.iterdir())) == 1, 30, what="delivered by the office")
        assert office.wait_events(2448)[0]["fields"]["queue_id"], "the office delivered it"
        assert not front.events(2448), "the front runs no postoffice"
        # Woken by the front's NOTIFY (polling is only the fallback).
        heard = 'mailgate_node_wakeups_total{direction="heard"}'
        sent = 'mailgate_node_wakeups_total{direction="sent"}'
        wait_for(lambda: status(office)["counters"]["counters"].get(heard, 0) >= 1, 10,
                 what="the office heard the front's wake-up")  # fmt: skip
        assert status(front)["counters"]["counters"].get(sent, 0) >= 1
        # History everywhere: either node tells the whole story, received on one and
        # delivered by the other.
        # (Events are each node's own log; the message, attempts and outcome are shared.)
        stories = []
        for mg in (front, office):
            story = mg.cli("track", ALICE, "--json")
            assert story.returncode == 0, story.stderr
            stories.append([{k: v for k, v in m.items() if k != "events"}
                            for m in json.loads(story.stdout)])  # fmt: skip
        assert stories[0] == stories[1] and len(stories[0]) == 1
        assert "delivered" in json.dumps(stories[0])
        assert front.stop() == 0 and office.stop() == 0
    finally:
        front.close()
        office.close()
