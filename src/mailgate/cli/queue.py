"""`mailgate queue`: queue management, like Postfix's postqueue, postsuper and qshape.

Works on any message in any state (quarantined and held included), whether the service
runs or not. Reads use a read-only connection and never create the queue. Each command
that changes the queue is one transaction of its own, written straight to the store (a
DirectWriter; SQLite serialises it with the running service's commits, waiting up to its
busy timeout), then writes its event and, if a service runs, nudges delivery over the
control socket (`wake`) so the change is acted on at once.

An administrator's command always takes effect: hold, delete and bounce of a message
being delivered right now take it from the thread delivering it (its lease is revoked),
ask the running service to cancel that attempt, and say what became of it (cli/inflight.py,
event 4020). `hold --all` still leaves recipients being delivered alone and says how many
it skipped. `retry` and `release` also make the connector forget that its destination was
down (Postfix's `postqueue -f` likewise clears its dead-destination cache).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from mailgate.cli import inflight
from mailgate.cli.common import config_options, get_config
from mailgate.cli.events import local_time, printable
from mailgate.cli.track import open_queue
from mailgate.config.schema import Config
from mailgate.config.units import parse_duration
from mailgate.control.server import request, socket_path
from mailgate.dsn.generate import BounceResult, report_bounce
from mailgate.errors import StoreError
from mailgate.headers import split_headers
from mailgate.observe import catalog
from mailgate.observe.eventstore import iso_time
from mailgate.queue import admin, history
from mailgate.queue.backend import Connection
from mailgate.queue.commit import DirectWriter
from mailgate.queue.sqlite import SqliteBackend
from mailgate.service import wiring

T = TypeVar("T")
EX_TEMPFAIL = 75
LEASE_GRACE = 60.0
NUDGE_TIMEOUT = 3.0
MAX_EXAMPLES = 20


class DurationType(click.ParamType[float]):
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class LeaseHeldError(click.ClickException):
    exit_code = EX_TEMPFAIL


@click.group("queue")
def queue_group() -> None:
    """Inspect and manage the queue (list, summary, show, retry, hold, release, delete,
    bounce, export, check), whether the service runs or not."""


# --- helpers -------------------------------------------------------------------------------------
def _address(value: str | None) -> str | None:
    """An address option: `<a@b>` or `a@b`; `<>` is the null sender."""
    if value is None:
        return None
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


@contextlib.contextmanager
def _reading(config: Config) -> Iterator[sqlite3.Connection | None]:
    try:
        with open_queue(config.queue_path) as conn:
            yield conn
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the queue {config.queue_path}: {exc}") from None


def _write(config: Config, name: str, op: Callable[[Connection], T]) -> T:
    """Run one change in one transaction of its own; errors become clear messages."""
    path = config.queue_path
    if not path.is_file():
        raise click.ClickException(f"no queue at {path} (no service has run on this data dir)")
    try:
        writer = DirectWriter(SqliteBackend(path))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return writer.submit(name, op).result()
    except admin.LeaseHeld as exc:
        raise LeaseHeldError(str(exc)) from None
    except (admin.AdminError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        writer.close()


def _emit(config: Config, *items: tuple[catalog.EventType, dict[str, Any]]) -> None:
    events = wiring.open_events(config, stderr=False)
    try:
        for event, fields in items:
            events.emit(event, **fields)
    finally:
        events.close()


def _nudge(config: Config, connectors: tuple[str, ...] = (), by: str | None = None) -> None:
    """Tell a running service that work may be due; nothing if no service runs. With `by`
    (the command, for event 2462), the connectors also forget that their destination was
    down: the administrator wants delivery tried now."""
    args: dict[str, Any] = {"connector": connectors[0]} if len(connectors) == 1 else {}
    args.update({"clear_down": by is not None, "by": by})
    try:
        request(socket_path(config.data_dir), "wake", args, timeout=NUDGE_TIMEOUT)
    except (OSError, ValueError):
        pass  # no service runs (or it is stopping): it reads the queue when it runs
    except RuntimeError as exc:
        click.echo(f"mailgate: the service did not take the wake-up: {exc}", err=True)


def _dump(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, default=str, indent=2))


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _target(queue_id: str | None, all_: bool) -> None:
    if (queue_id is None) == (not all_):
        raise click.UsageError("give a queue ID or --all (not both)")


def _scope(queue_id: str | None, connector: str | None) -> str:
    if queue_id is not None:
        return queue_id if connector is None else f"{queue_id} via {connector}"
    return "all messages" if connector is None else f"all messages via {connector}"


def _report(done: Any) -> str:
    if isinstance(done, BounceResult):
        if done.bounce_id is not None:
            return f"{done.bounce_id} ({done.kind}) to <{done.recipient}>"
        return f"none ({done.dropped})"
    return "none"


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


# --- reading -------------------------------------------------------------------------------------
def _recipient_json(r: history.QueuedRecipient) -> dict[str, Any]:
    return {
        "address": r.address,
        "connector": r.connector,
        "state": r.state,
        "attempts": r.attempts,
        "last_reply": r.last_reply,
        "due_at": r.due_at if r.state in ("queued", "deferred") else None,
        "lease_owner": r.lease_owner,
        "lease_until": r.lease_until,
    }


def _message_json(m: history.QueuedMessage, now: float) -> dict[str, Any]:
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
    if due_at is not None and state in ("queued", "deferred"):
        due = due_at - now
        return f"{state}, next attempt {'now' if due <= 0 else 'in ' + _ago(due)}"
    return state


@queue_group.command("list")
@click.option("--connector", help="Only messages with a recipient for this connector.")
@click.option(
    "--state",
    type=click.Choice(history.STATES),
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
    with _reading(config) as conn:
        found = (
            []
            if conn is None
            else history.list_messages(
                conn,
                connector=connector,
                state=state,
                received_before=None if older_than is None else now - older_than,
                sender=_address(sender),
                recipient=_address(recipient),
                limit=limit,
            )
        )
    if as_json:
        _dump([_message_json(m, now) for m in found])
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


@queue_group.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def summary(as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Waiting recipients per connector by message age (qshape buckets, minutes) and state."""
    config = get_config(config_path, data_dir)
    now = time.time()
    with _reading(config) as conn:
        shapes = {} if conn is None else history.queue_shape(conn, now)
    total = history.ConnectorShape()
    for shape in shapes.values():
        total.total += shape.total
        for name, count in shape.ages.items():
            total.ages[name] += count
        for name, count in shape.states.items():
            total.states[name] = total.states.get(name, 0) + count
    if as_json:
        _dump(
            {
                "buckets": list(history.BUCKET_NAMES),
                "total": {"total": total.total, "ages": total.ages, "states": total.states},
                "connectors": {
                    name: {"total": s.total, "ages": s.ages, "states": s.states}
                    for name, s in shapes.items()
                },
            }
        )
        return
    rows = [("TOTAL", total), *shapes.items()]
    ages = " ".join(f"{name:>6}" for name in history.BUCKET_NAMES)
    click.echo(f"{'':>12} {'T':>6} {ages}")
    for name, shape in rows:
        counts = " ".join(f"{shape.ages[b]:>6}" for b in history.BUCKET_NAMES)
        click.echo(f"{name:>12} {shape.total:>6} {counts}")
    click.echo("")
    states = " ".join(f"{s:>11}" for s in history.OPEN_STATES)
    click.echo(f"{'':>12} {states}")
    for name, shape in rows:
        counts = " ".join(f"{shape.states.get(s, 0):>11}" for s in history.OPEN_STATES)
        click.echo(f"{name:>12} {counts}")


def _lookup(conn: sqlite3.Connection | None, key: str) -> str:
    queue_id = None if conn is None else history.message_id(conn, key)
    if queue_id is None:
        raise click.ClickException(f"no message {printable(key.strip())} in the queue")
    return queue_id


@queue_group.command()
@click.argument("queue_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def show(queue_id: str, as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """A message: envelope, recipients and their states, every attempt, and its headers."""
    config = get_config(config_path, data_dir)
    now = time.time()
    with _reading(config) as conn:
        found = _lookup(conn, queue_id)
        assert conn is not None
        message = history.message_history(conn, found)
        body = history.stored_body(conn, found)
    if message is None:
        raise click.ClickException(f"no message {found} in the queue")
    headers = header_fields(body) if body is not None else []
    item = {
        "queue_id": message.queue_id,
        "received": iso_time(message.received_at),
        "received_at": message.received_at,
        "age": round(now - message.received_at, 1),
        "client": message.client,
        "sender": message.sender,
        "size": message.size,
        "message_id": message.header_message_id,
        "kind": message.kind,
        "bounce_of": message.bounce_of,
        "origin": message.origin,
        "smtputf8": message.smtputf8,
        "done_at": message.done_at,
        "body_stored": body is not None,
        "recipients": [
            {
                "address": r.address,
                "connector": r.connector,
                "state": r.state,
                "attempts": r.attempts,
                "last_reply": r.last_reply,
                "remote_mta": r.remote_mta,
                "due_at": r.due_at if r.state in ("queued", "deferred") else None,
                "updated_at": r.updated_at,
                "lease_owner": r.lease_owner,
                "lease_until": r.lease_until,
                "history": [
                    {
                        "time": iso_time(a.started_at),
                        "started_at": a.started_at,
                        "finished_at": a.finished_at,
                        "disposition": a.disposition,
                        "reply": a.reply,
                    }
                    for a in r.history
                ],
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
        _dump(item)
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


@queue_group.command()
@click.argument("queue_id", metavar="ID")
@config_options
def export(queue_id: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Write the stored message (bytes, as received) to standard output."""
    config = get_config(config_path, data_dir)
    with _reading(config) as conn:
        found = _lookup(conn, queue_id)
        assert conn is not None
        body = history.stored_body(conn, found)
        message = history.message_history(conn, found)
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


@queue_group.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def check(as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Check the store's integrity; exit 1 listing what is wrong."""
    config = get_config(config_path, data_dir)
    problems: list[dict[str, Any]] = []
    with _reading(config) as conn:
        if conn is not None:
            try:
                damage = history.integrity_check(conn)
                if damage:
                    problems.append(
                        {
                            "kind": "integrity",
                            "description": "SQLite quick_check found damage",
                            "count": len(damage),
                            "examples": damage[:MAX_EXAMPLES],
                        }
                    )
                for found in history.check_store(
                    conn, time.time(), lease_grace=LEASE_GRACE, limit=MAX_EXAMPLES
                ):
                    problems.append(
                        {
                            "kind": found.kind,
                            "description": found.description,
                            "count": found.count,
                            "examples": list(found.examples),
                        }
                    )
            except sqlite3.Error as exc:
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
        _dump(result)
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


# --- changing ------------------------------------------------------------------------------------
def _changed(
    config: Config,
    result: admin.Changed,
    verb: str,
    event: catalog.EventType,
    connector: str | None,
    as_json: bool,
    nudge: str | None,
    fates: list[inflight.Fate] | None = None,
) -> None:
    scope = _scope(result.queue_id, connector)
    fates = fates or []
    count = result.count - inflight.delivered(fates)  # those were delivered, not changed
    if count or result.queue_id is None:
        fields: dict[str, Any] = {"scope": scope, "count": count}
        if result.queue_id is not None:
            fields["queue_id"] = result.queue_id
        if connector is not None:
            fields["connector"] = connector
        if result.skipped:
            fields["skipped"] = result.skipped
        _emit(config, (event, fields))
    if nudge is not None and result.count:
        _nudge(config, result.connectors, by=nudge)
    if as_json:
        item: dict[str, Any] = {
            "queue_id": result.queue_id,
            "connector": connector,
            verb: count,
            "skipped_active": result.skipped,
        }
        if fates:
            item["revoked"] = inflight.as_json(fates)
        _dump(item)
        return
    text = f"{scope}: {count} recipient(s) {verb}" + inflight.describe(fates, "hold")
    if result.skipped:
        text += f"; {result.skipped} being delivered now left alone"
    click.echo(text)


def _bulk_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)
    func = click.option("--connector", help="Only recipients for this connector.")(func)
    func = click.option("--all", "all_", is_flag=True, help="Every message in the queue.")(func)
    return click.argument("queue_id", metavar="ID", required=False)(func)


@queue_group.command()
@_bulk_options
@config_options
def retry(
    queue_id: str | None,
    all_: bool,
    connector: str | None,
    as_json: bool,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Make deferred (and queued) recipients due now: delivery tries them at once."""
    _target(queue_id, all_)
    config = get_config(config_path, data_dir)
    # The connectors forget a down marking before the recipients become due, so that none
    # is deferred at once in between, and again after (see _nudge).
    by = "mailgate queue retry"
    _nudge(config, () if connector is None else (connector,), by=by)
    now = time.time()
    result = _write(config, "retry", lambda c: admin.retry(c, queue_id, now, connector))
    _changed(config, result, "retried", catalog.QUEUE_RETRIED, connector, as_json, by)


@queue_group.command()
@_bulk_options
@config_options
def hold(
    queue_id: str | None,
    all_: bool,
    connector: str | None,
    as_json: bool,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Hold queued and deferred recipients: no delivery until `queue release`.

    For one message, a recipient being delivered right now is held too: its attempt is
    cancelled (or, if it already delivered, the recipient counts as delivered), and the
    reply says which. With --all, such recipients are left alone and counted."""
    _target(queue_id, all_)
    config = get_config(config_path, data_dir)
    now = time.time()
    revoke = queue_id is not None
    result = _write(
        config, "hold", lambda c: admin.hold(c, queue_id, now, connector, revoke_leases=revoke)
    )
    fates = inflight.cancel_attempts(config, result.revoked)
    inflight.report(config, fates, "hold")
    _changed(config, result, "held", catalog.MESSAGE_HELD, connector, as_json, None, fates)


@queue_group.command()
@_bulk_options
@config_options
def release(
    queue_id: str | None,
    all_: bool,
    connector: str | None,
    as_json: bool,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Put held recipients back in the queue, due now. For one message, quarantined
    recipients are released too (with a fresh internal-failure budget); --all releases
    held recipients only."""
    _target(queue_id, all_)
    config = get_config(config_path, data_dir)
    now = time.time()
    result = _write(config, "release", lambda c: admin.release(c, queue_id, now, connector))
    by = "mailgate queue release"
    _changed(config, result, "released", catalog.MESSAGE_RELEASED, connector, as_json, by)


def _finished(
    config: Config, result: admin.Finished, event: catalog.EventType, fields: dict[str, Any]
) -> None:
    """The events of a delete or return (then those of the finished message), and a nudge
    if a bounce was queued."""
    events = wiring.open_events(config, stderr=False)
    try:
        events.emit(event, queue_id=result.queue_id, **fields)
        if result.finished:
            if not result.removed:
                events.emit(catalog.MESSAGE_DONE, queue_id=result.queue_id)
            report_bounce(events, result.done)
    finally:
        events.close()
    if isinstance(result.done, BounceResult) and result.done.bounce_id is not None:
        _nudge(config)  # a bounce is due: no reason to forget a down destination


@queue_group.command()
@click.argument("queue_id", metavar="ID")
@click.option(
    "--ndr",
    is_flag=True,
    help="First bounce its open recipients (554 5.7.0) so the sender gets a report.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def delete(
    queue_id: str, ndr: bool, as_json: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Remove a message: its recipients, attempts and body. A recipient being delivered
    right now is taken from its thread first, and the reply says what became of the
    attempt (cancelled, or already delivered)."""
    config = get_config(config_path, data_dir)
    on_done = wiring.bounce_generator(config) if ndr else None
    fates = _take_over(config, queue_id, "delete")
    now = time.time()
    result = _write(
        config, "delete", lambda c: admin.delete(c, queue_id, now, ndr=ndr, on_done=on_done)
    )
    if not ndr:
        report = "none (not asked for)"
    elif not result.closed:
        report = "none (every recipient was final already)"
    else:
        report = _report(result.done)
    _finished(config, result, catalog.MESSAGE_DELETED, {"open": result.closed, "report": report})
    if as_json:
        _dump(_finished_json(result, "deleted", fates))
    else:
        click.echo(
            f"{result.queue_id}: deleted ({result.closed} recipient(s) not yet final); "
            f"report: {report}" + inflight.describe(fates, "delete")
        )


def _take_over(config: Config, queue_id: str, command: str) -> list[inflight.Fate]:
    """Before a delete or return: if the message is being delivered, hold it, take it from
    its threads, and learn (and report, event 4020) what their attempts came to."""
    now = time.time()
    revoked = _write(config, command, lambda c: admin.take_over(c, queue_id, now))
    fates = inflight.cancel_attempts(config, revoked)
    inflight.report(config, fates, command)
    return fates


@queue_group.command("bounce")
@click.argument("queue_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def bounce_(queue_id: str, as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Return a message to its sender: open recipients are bounced (554 5.7.0) and a
    non-delivery report is queued. A recipient being delivered right now is taken from
    its thread first: one its attempt delivered after all is not reported as failed."""
    config = get_config(config_path, data_dir)
    on_done = wiring.bounce_generator(config)
    fates = _take_over(config, queue_id, "bounce")
    now = time.time()
    try:
        result = _write(
            config, "bounce", lambda c: admin.return_to_sender(c, queue_id, now, on_done)
        )
    except click.ClickException as exc:  # e.g. nothing left to return: say why
        raise type(exc)(exc.message + inflight.describe(fates, "bounce")) from None
    report = _report(result.done)
    _finished(config, result, catalog.MESSAGE_RETURNED, {"count": result.closed, "report": report})
    if as_json:
        _dump(_finished_json(result, "returned", fates))
    else:
        click.echo(
            f"{result.queue_id}: returned to the sender, {result.closed} recipient(s) bounced; "
            f"report: {report}" + inflight.describe(fates, "bounce")
        )


def _finished_json(result: admin.Finished, verb: str, fates: list[inflight.Fate]) -> dict[str, Any]:
    done = result.done if isinstance(result.done, BounceResult) else None
    return {
        "queue_id": result.queue_id,
        verb: True,
        "revoked": inflight.as_json(fates),
        "recipients_closed": result.closed,
        "bounce_id": None if done is None else done.bounce_id,
        "bounce_to": None if done is None else done.recipient,
        "bounce_dropped": None if done is None else done.dropped,
    }
