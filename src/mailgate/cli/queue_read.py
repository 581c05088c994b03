"""`mailgate queue list|summary|show|export|check`: what is in the queue, read-only.

Like Postfix's mailq, postcat and qshape: any message in any state, whether the service
runs or not, through the queue's one read path (queue/reader.py) on a read-only
connection that never creates the queue. `check` also says how to recover a damaged
queue file (Q159305). Nothing here changes the queue; cli/queue_act.py does.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from mailgate.cli.common import config_options, echo_json, get_config
from mailgate.cli.events import local_time, printable
from mailgate.cli.reading import attempt_fields, message_fields, reading, recipient_fields
from mailgate.config.units import parse_duration
from mailgate.errors import StoreError
from mailgate.headers import split_headers
from mailgate.model import FINAL_STATES, OPEN_STATES, WAITING_STATES
from mailgate.observe.eventstore import iso_time
from mailgate.queue.listing import BUCKET_NAMES, ConnectorShape, QueuedMessage, QueuedRecipient
from mailgate.queue.reader import QueueReader

LEASE_GRACE = 60.0
MAX_EXAMPLES = 20
STATE_NAMES = [s.value for s in (*OPEN_STATES, *FINAL_STATES)]


class DurationType(click.ParamType[float]):
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _address(value: str | None) -> str | None:
    """An address option: `<a@b>` or `a@b`; `<>` is the null sender."""
    if value is None:
        return None
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """The header fields of a raw message, unfolded, as (name, value); never raises."""
    fields: list[tuple[str, str]] = []
    for line in re.split(rb"\r?\n", split_headers(data)):
        if not line:
            continue
        text = line.decode("utf-8", errors="replace")
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {text.strip()}")
            continue
        name, sep, value = text.partition(":")
        fields.append((name, value.strip()) if sep else ("", text))
    return fields


def _recipient_json(r: QueuedRecipient) -> dict[str, Any]:
    return {
        "address": r.address,
        "connector": r.connector,
        "state": r.state,
        "attempts": r.attempts,
        "last_reply": r.last_reply,
        "due_at": r.due_at if r.state in WAITING_STATES else None,
        "lease_owner": r.lease_owner,
        "lease_until": r.lease_until,
    }


def _message_json(m: QueuedMessage, now: float) -> dict[str, Any]:
    return {
        "queue_id": m.queue_id,
        "received": iso_time(m.received_at),
        "received_at": m.received_at,
        "age": round(now - m.received_at, 1),
        "size": m.size,
        "sender": m.sender,
        "kind": m.kind,
        "done_at": m.done_at,
        "recipients": [_recipient_json(r) for r in m.recipients],
    }


def _state_text(state: str, due_at: float | None, now: float) -> str:
    if due_at is not None and state in WAITING_STATES:
        due = due_at - now
        return f"{state}, next attempt {'now' if due <= 0 else 'in ' + _ago(due)}"
    return state


@click.command("list")
@click.option("--connector", help="Only messages with a recipient for this connector.")
@click.option(
    "--state",
    type=click.Choice(STATE_NAMES),
    help="Only messages with a recipient in this state (delivered/bounced include "
    "finished messages).",
)
@click.option(
    "--older-than", "older_than", type=DurationType(), help="Only messages older than this."
)
@click.option("--sender", help="Only messages from this envelope sender (<> for the null one).")
@click.option("--recipient", help="Only messages with this recipient.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@config_options
def list_(
    connector: str | None,
    state: str | None,
    older_than: float | None,
    sender: str | None,
    recipient: str | None,
    limit: int,
    as_json: bool,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """One row per message, oldest first: queue id, arrival, age, size, sender, and each
    recipient with its connector, state and last reply. Finished messages are left out
    unless --state delivered or bounced asks for them."""
    config = get_config(config_path, data_dir)
    now = time.time()
    with reading(config) as reader:
        found = (
            []
            if reader is None
            else reader.list_messages(
                connector=connector,
                state=state,
                received_before=None if older_than is None else now - older_than,
                sender=_address(sender),
                recipient=_address(recipient),
                limit=limit,
            )
        )
    if as_json:
        echo_json([_message_json(m, now) for m in found])
        return
    p = printable
    click.echo(f"{'QUEUE ID':<20} {'ARRIVAL':<19} {'AGE':>6} {'SIZE':>9}  SENDER")
    for m in found:
        click.echo(
            f"{m.queue_id:<20} {local_time(m.received_at)} {_ago(now - m.received_at):>6} "
            f"{m.size:>9}  <{p(m.sender)}>" + ("" if m.kind == "normal" else f" ({m.kind})")
        )
        for r in m.recipients:
            reply = f": {p(r.last_reply)}" if r.last_reply else ""
            click.echo(
                f"{'':<20} <{p(r.address)}> {r.connector} "
                f"{_state_text(r.state, r.due_at, now)}{reply}"
            )
    count = sum(len(m.recipients) for m in found)
    click.echo(f"-- {len(found)} message(s), {count} recipient(s)")
    if len(found) >= limit:
        click.echo(f"mailgate: only the first {limit} shown (--limit, or filter)", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def summary(as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Waiting recipients per connector by message age (qshape buckets, minutes) and state."""
    config = get_config(config_path, data_dir)
    now = time.time()
    with reading(config) as reader:
        shapes = {} if reader is None else reader.shape(now)
    total = ConnectorShape()
    for shape in shapes.values():
        total.total += shape.total
        for name, count in shape.ages.items():
            total.ages[name] += count
        for name, count in shape.states.items():
            total.states[name] = total.states.get(name, 0) + count
    if as_json:
        echo_json(
            {
                "buckets": list(BUCKET_NAMES),
                "total": {"total": total.total, "ages": total.ages, "states": total.states},
                "connectors": {
                    name: {"total": s.total, "ages": s.ages, "states": s.states}
                    for name, s in shapes.items()
                },
            }
        )
        return
    rows = [("TOTAL", total), *shapes.items()]
    ages = " ".join(f"{name:>6}" for name in BUCKET_NAMES)
    click.echo(f"{'':>12} {'T':>6} {ages}")
    for name, shape in rows:
        counts = " ".join(f"{shape.ages[b]:>6}" for b in BUCKET_NAMES)
        click.echo(f"{name:>12} {shape.total:>6} {counts}")
    click.echo("")
    states = " ".join(f"{s:>11}" for s in OPEN_STATES)
    click.echo(f"{'':>12} {states}")
    for name, shape in rows:
        counts = " ".join(f"{shape.states.get(s, 0):>11}" for s in OPEN_STATES)
        click.echo(f"{name:>12} {counts}")


def _lookup(reader: QueueReader | None, key: str) -> str:
    queue_id = None if reader is None else reader.message_id(key)
    if queue_id is None:
        raise click.ClickException(f"no message {printable(key.strip())} in the queue")
    return queue_id


@click.command()
@click.argument("queue_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def show(queue_id: str, as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """A message: envelope, recipients and their states, every attempt, and its headers."""
    config = get_config(config_path, data_dir)
    now = time.time()
    with reading(config) as reader:
        found = _lookup(reader, queue_id)
        assert reader is not None
        message = reader.message_history(found)
        body = reader.body(found)
    if message is None:
        raise click.ClickException(f"no message {found} in the queue")
    headers = header_fields(body) if body is not None else []
    item = {
        "queue_id": message.queue_id,
        "received": iso_time(message.received_at),
        "received_at": message.received_at,
        "age": round(now - message.received_at, 1),
        **message_fields(message),
        "body_stored": body is not None,
        "recipients": [
            {
                **recipient_fields(r),
                "lease_owner": r.lease_owner,
                "lease_until": r.lease_until,
                "history": [attempt_fields(a) for a in r.history],
            }
            for r in message.recipients
        ],
        "bounces": [
            {"bounce_id": b.queue_id, "kind": b.kind, "recipient": b.recipient, "state": b.state}
            for b in message.bounces
        ],
        "headers": [[name, value] for name, value in headers],
    }
    if as_json:
        echo_json(item)
        return
    p = printable
    click.echo(message.queue_id)
    click.echo(
        f"  arrival    {local_time(message.received_at)} ({_ago(now - message.received_at)} "
        f"ago) from {p(message.client)}"
    )
    click.echo(f"  sender     <{p(message.sender)}>")
    click.echo(
        f"  size       {message.size} bytes, kind {message.kind}, "
        f"message-id {p(message.header_message_id or '-')}"
    )
    if message.bounce_of:
        click.echo(f"  bounce of  {message.bounce_of}")
    if message.done_at is not None:
        click.echo(f"  done       {local_time(message.done_at)} (body removed)")
    for r in message.recipients:
        state = _state_text(r.state, r.due_at, now)
        if r.state == "active" and r.lease_owner:
            until = local_time(r.lease_until) if r.lease_until is not None else "?"
            state += f", leased to {p(r.lease_owner)} until {until}"
        click.echo(
            f"  recipient  <{p(r.address)}> via {r.connector}: {state}, {r.attempts} attempt(s)"
        )
        for a in r.history:
            click.echo(f"    {local_time(a.started_at)} {a.disposition}: {p(a.reply)}")
        if r.last_reply and (not r.history or r.history[-1].reply != r.last_reply):
            click.echo(f"    {p(r.last_reply)}")
    for b in message.bounces:
        click.echo(f"  bounce     {b.queue_id} ({b.kind}) to <{p(b.recipient or '?')}>: {b.state}")
    if body is not None:
        click.echo("  headers:")
        for name, value in headers:
            click.echo(f"    {p(name)}: {p(value)}" if name else f"    {p(value)}")


@click.command()
@click.argument("queue_id", metavar="ID")
@config_options
def export(queue_id: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Write the stored message (bytes, as received) to standard output."""
    config = get_config(config_path, data_dir)
    with reading(config) as reader:
        found = _lookup(reader, queue_id)
        assert reader is not None
        body = reader.body(found)
        message = reader.message_history(found)
    if body is None:
        done = message.done_at if message is not None else None
        when = f" at {local_time(done)}" if done is not None else ""
        raise click.ClickException(
            f"message {found} has no stored body: it finished{when}, and finished messages "
            "keep no body"
            if done is not None
            else f"message {found} has no stored body (see `mailgate queue check`)"
        )
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def check(as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Check the store's integrity; exit 1 listing what is wrong."""
    config = get_config(config_path, data_dir)
    problems: list[dict[str, Any]] = []
    with reading(config) as reader:
        if reader is not None:
            try:
                damage = reader.integrity()
                if damage:
                    problems.append(
                        {
                            "kind": "integrity",
                            "description": "SQLite quick_check found damage",
                            "count": len(damage),
                            "examples": damage[:MAX_EXAMPLES],
                        }
                    )
                for found in reader.check_store(lease_grace=LEASE_GRACE, limit=MAX_EXAMPLES):
                    problems.append(
                        {
                            "kind": found.kind,
                            "description": found.description,
                            "count": found.count,
                            "examples": list(found.examples),
                        }
                    )
            except StoreError as exc:
                problems.append(
                    {
                        "kind": "unreadable",
                        "description": "the queue cannot be read",
                        "count": 1,
                        "examples": [str(exc)],
                    }
                )
    exists = config.queue_path.is_file()
    damaged = any(p["kind"] in ("integrity", "unreadable") for p in problems)
    advice = damage_advice(config.queue_path) if damaged else []
    result = {
        "ok": not problems,
        "queue": str(config.queue_path),
        "exists": exists,
        "problems": problems,
        "advice": advice,
    }
    if as_json:
        echo_json(result)
    elif not exists:
        click.echo(f"{config.queue_path}: no queue yet, nothing to check")
    elif not problems:
        click.echo(f"{config.queue_path}: ok")
    else:
        click.echo(f"{config.queue_path}: {len(problems)} problem(s)")
        for problem in problems:
            click.echo(f"  {problem['count']} {problem['description']} ({problem['kind']}):")
            for example in problem["examples"]:
                click.echo(f"    {printable(example)}")
        if advice:
            click.echo("what to do:")
            for line in advice:
                click.echo(f"  {line}")
    if problems:
        raise SystemExit(1)


def damage_advice(path: Path) -> list[str]:
    """How to get a service running again on a damaged queue file (Q159305).

    `.dump` writes every row SQLite can still reach; where it met damage it ends with
    ROLLBACK, which the sed turns into COMMIT so the readable rows are kept. (`.recover`
    reads more, but fails with "SQL logic error" in SQLite 3.40, which Debian 12 ships.)"""
    db, copy = shlex.quote(str(path)), shlex.quote(f"{path}.recovered")
    return [
        "1. Stop mailgate (it refuses to start on this file) and keep a copy of "
        f"{path} and, if present, its -wal and -shm files.",
        f"2. Copy out what can be read: sqlite3 {db} .dump | sed "
        f"'s/^ROLLBACK; -- due to errors$/COMMIT;/' | sqlite3 {copy}",
        f"3. Put the copy in place: rm -f {db} {db}-wal {db}-shm && mv {copy} {db}",
        "4. Run `mailgate queue check` again; when it says ok, start mailgate. Messages "
        "whose rows were on the damaged pages are gone: `mailgate queue list` shows what "
        "remains.",
    ]
