"""`mailgate track KEY`: a message's whole life, from the queue and the event store.

KEY is a queue id, a Message-ID (with or without <>), or an address (envelope
sender or recipient; the most recent messages first). For each message: when and
from whom it was received, each recipient with its connector and state, every
delivery attempt (when, outcome, remote reply, delay since arrival, duration),
the bounces it caused and the stored events about it. Read-only: works whether
the service runs or not. Exit status 1 when nothing matches.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from mailgate.cli.common import config_options, get_config
from mailgate.cli.events import human_line, local_time, open_reader, printable
from mailgate.cli.reading import attempt_fields, message_fields, reading, recipient_fields
from mailgate.observe.catalog import MESSAGE_RECEIVED, NDR_GENERATED, PICKED_UP
from mailgate.observe.eventstore import EventReader, iso_time, store_path
from mailgate.queue.history import BounceRef, MessageHistory
from mailgate.queue.reader import QueueReader

MAX_MESSAGES = 20
MAX_EVENTS = 1000


@contextlib.contextmanager
def _events_reader(path: Path) -> Iterator[EventReader | None]:
    reader = open_reader(path)
    try:
        yield reader
    finally:
        if reader is not None:
            reader.close()


@click.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per message.")
@config_options
def track(key: str, as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Show the life of the message(s) KEY designates: queue id, Message-ID or address."""
    config = get_config(config_path, data_dir)
    with reading(config) as queue, _events_reader(store_path(config.log_dir)) as events:
        found = collect(key, queue, events)
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False, default=str, indent=2))
    else:
        for n, item in enumerate(found):
            if n:
                click.echo("")
            for line in render(item):
                click.echo(line)
    if not found:
        if not as_json:
            click.echo(f"mailgate: no message matches {printable(key)}", err=True)
        raise SystemExit(1)


def collect(
    key: str, queue: QueueReader | None, events: EventReader | None
) -> list[dict[str, Any]]:
    """What `track KEY --json` prints (the dashboard's track page shows the same)."""
    found: list[dict[str, Any]] = []
    if queue is not None:
        for queue_id in queue.find(key, MAX_MESSAGES):
            message = queue.message_history(queue_id)
            if message is not None:
                found.append(_as_dict(message, _stored_events(events, queue_id), queue))
    if not found and events is not None:
        # Finished messages are purged from the queue after [queue] keep_done; the
        # event store may still remember them.
        stored = _stored_events(events, key.strip())
        if stored:
            found.append(_from_events(key.strip(), stored, queue))
    return found


def _stored_events(events: EventReader | None, queue_id: str) -> list[dict[str, Any]]:
    if events is None:
        return []
    return events.query(queue_id=queue_id, limit=MAX_EVENTS)


def _bounces(
    queued: tuple[BounceRef, ...],
    stored: list[dict[str, Any]],
    queue: QueueReader | None,
) -> list[dict[str, Any]]:
    """Bounces from the queue, completed by NDR events (which outlive purged messages)."""
    bounces: dict[str, dict[str, Any]] = {}
    for ref in queued:
        bounces[ref.queue_id] = {
            "bounce_id": ref.queue_id,
            "kind": ref.kind,
            "time": iso_time(ref.received_at),
            "ts": ref.received_at,
            "recipient": ref.recipient,
            "state": ref.state,
            "failed": None,
        }
    for event in stored:
        if event["id"] != NDR_GENERATED.id:
            continue
        fields = event["fields"]
        bounce_id = str(fields.get("bounce_id"))
        entry = bounces.setdefault(
            bounce_id,
            {
                "bounce_id": bounce_id,
                "kind": fields.get("kind"),
                "time": event["time"],
                "ts": event["ts"],
                "recipient": fields.get("recipient"),
                "state": None,
                "failed": None,
            },
        )
        entry["failed"] = fields.get("failed")
        if entry["state"] is None and queue is not None:
            target = queue.first_recipient(bounce_id)
            entry["state"] = None if target is None else target[1]
    return sorted(bounces.values(), key=lambda b: b["ts"])


def _as_dict(
    message: MessageHistory, stored: list[dict[str, Any]], queue: QueueReader | None
) -> dict[str, Any]:
    arrival = message.received_at
    return {
        "queue_id": message.queue_id,
        "in_queue": True,
        "received": iso_time(arrival),
        "received_at": arrival,
        **message_fields(message),
        "recipients": [
            {
                **recipient_fields(r),
                "history": [
                    {
                        **attempt_fields(a),
                        "delay": round(a.started_at - arrival, 3),
                        "duration": round(a.finished_at - a.started_at, 3),
                    }
                    for a in r.history
                ],
            }
            for r in message.recipients
        ],
        "bounces": _bounces(message.bounces, stored, queue),
        "events": stored,
    }


def _from_events(
    queue_id: str, stored: list[dict[str, Any]], queue: QueueReader | None
) -> dict[str, Any]:
    """What the event store alone says of a message no longer in the queue."""
    received = next((e for e in stored if e["id"] in (MESSAGE_RECEIVED.id, PICKED_UP.id)), None)
    fields = received["fields"] if received else {}
    return {
        "queue_id": queue_id,
        "in_queue": False,
        "received": received["time"] if received else None,
        "received_at": received["ts"] if received else None,
        "client": fields.get("client") or fields.get("outbox"),
        "sender": fields.get("sender"),
        "size": fields.get("size"),
        "message_id": fields.get("message_id"),
        "kind": None,
        "bounce_of": None,
        "origin": fields.get("file"),
        "smtputf8": None,
        "done_at": None,
        "recipients": [],
        "bounces": _bounces((), stored, queue),
        "events": stored,
    }


# --- human form ----------------------------------------------------------------------------------
def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(item: dict[str, Any]) -> list[str]:
    """The lines of `mailgate track` for one message."""
    p = printable
    lines = [f"{item['queue_id']}"]
    if item["received_at"] is not None:
        sender = p(item["sender"]) if item["sender"] is not None else "?"
        size = f"{item['size']} bytes" if item["size"] is not None else "? bytes"
        lines.append(
            f"  received   {local_time(item['received_at'], millis=True)} from "
            f"{p(item['client'])}: <{sender}>, {size}, message-id {p(item['message_id'] or '-')}"
        )
    if not item["in_queue"]:
        lines.append("  (no longer in the queue; from the event store)")
    if item["bounce_of"]:
        lines.append(f"  {item['kind']} of {item['bounce_of']}")
    elif item["kind"] not in (None, "normal"):
        lines.append(f"  kind       {item['kind']}")
    if item["origin"]:
        lines.append(f"  origin     {p(item['origin'])}")
    now = time.time()
    for r in item["recipients"]:
        state = r["state"]
        if r["due_at"] is not None:
            due = r["due_at"] - now
            state += f", next attempt {'now' if due <= 0 else 'in ' + _ago(due)}"
        lines.append(
            f"  recipient  <{p(r['address'])}> via {r['connector']}: {state}, "
            f"{r['attempts']} attempt(s)"
            + (f", remote {p(r['remote_mta'])}" if r["remote_mta"] else "")
        )
        for a in r["history"]:
            lines.append(
                f"    {local_time(a['started_at'], millis=True)} {a['disposition']} "
                f"after {a['delay']:.2f}s in queue, took {a['duration']:.3f}s: {p(a['reply'])}"
            )
        if not r["history"] and r["last_reply"]:
            lines.append(f"    {p(r['last_reply'])}")
    for b in item["bounces"]:
        failed = f" for {p(b['failed'])}" if b["failed"] else ""
        state = f": {b['state']}" if b["state"] else ""
        lines.append(
            f"  bounce     {b['bounce_id']} ({b['kind']}) {local_time(b['ts'])} "
            f"to <{p(b['recipient'] or '?')}>{failed}{state}"
        )
    if item["done_at"] is not None:
        lines.append(f"  done       {local_time(item['done_at'], millis=True)}")
    if item["events"]:
        lines.append("  events:")
        lines += [f"    {human_line(e)}" for e in item["events"]]
    return lines
