"""The smarthost connector breaks lines over 998 octets before DATA, and SIZE counts what it
sends (a peer may hold the client to its declared SIZE, RFC 1870)."""

from __future__ import annotations

import json

from mailgate.model import Disposition
from mailgate.observe.events import JsonLinesFormatter
from tests.integration.test_smarthost import claim, connector
from tests.support.sink import Sink
from tests.unit.test_events import ListHandler


def test_long_lines_are_broken_before_data_and_size_counts_them() -> None:
    body = b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n.leading dot " + b"y" * 1500 + b"\r\n"
    with Sink() as sink:
        smarthost = connector(sink)
        events = ListHandler()
        events.setFormatter(JsonLinesFormatter())
        smarthost.events.add_sink(events)
        session = smarthost.open()
        [result] = session.deliver([claim()], body)
        session.close()
    assert result.disposition is Disposition.DELIVERED, result.reply
    [message] = sink.messages
    assert max(len(line) for line in message.content.split(b"\r\n")) == 998
    assert message.content.replace(b"\r\n ", b"") == body
    assert f"SIZE={len(message.content)}" in message.mail_options
    [broken] = [e for e in map(json.loads, events.lines) if e["id"] == 3020]
    assert broken["fields"]["queue_id"] == "Q1"
