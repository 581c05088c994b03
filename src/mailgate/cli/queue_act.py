"""`mailgate queue retry|hold|release|delete|bounce`: the administrator changes the queue.

Like Postfix's postsuper and `postqueue -f`, whether the service runs or not. Each
command is one transaction of its own through the queue store, written straight to the
store (a DirectWriter; SQLite serialises it with the running service's commits, waiting
up to its busy timeout), then writes its event. What the commit owes afterwards is the
store's (queue/effects.py), with this process's wake-up: `ServiceNudge` asks a running
service over its control socket (`wake`) to act on the change at once, and the reports
queued are told of (2117, 2118).

An administrator's command always takes effect: hold, delete and bounce of a message
being delivered right now take it from the thread delivering it (its lease is revoked),
ask the running service to cancel that attempt, and say what became of it (cli/inflight.py,
event 4020). `hold --all` still leaves recipients being delivered alone and says how many
it skipped. `retry` and `release` also make the connector forget that its destination was
down (Postfix's `postqueue -f` likewise clears its dead-destination cache).

Each command's work is a function of its own (`retry_messages`, `hold_messages`,
`release_messages`, `delete_message`, `return_message`) that returns an `Outcome`, the
text and the JSON object the command prints: the dashboard (web/queue_pages.py) runs
the same functions in the service, with the service's event log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from mailgate.cli import inflight
from mailgate.cli.common import config_options, echo_json, get_config
from mailgate.config.schema import Config
from mailgate.control.server import request, socket_path
from mailgate.dsn.generate import BounceResult
from mailgate.errors import StoreError
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.queue import admin
from mailgate.queue.commit import DirectWriter
from mailgate.queue.effects import Effects
from mailgate.queue.open import open_backend
from mailgate.queue.store import QueueStore
from mailgate.service import wiring

T = TypeVar("T")
EX_TEMPFAIL = 75
NUDGE_TIMEOUT = 3.0


class LeaseHeldError(click.ClickException):
    exit_code = EX_TEMPFAIL


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a queue command did: the line it prints, and its --json object."""

    text: str
    data: dict[str, Any]

    def echo(self, as_json: bool) -> None:
        if as_json:
            echo_json(self.data)
        else:
            click.echo(self.text)


class ServiceNudge:
    """The command line's wake-up (a queue/effects.py Waker): tell a running service that
    work may be due; nothing if no service runs. With `by` (the command, for event 2462),
    the connectors also forget that their destination was down: the administrator wants
    delivery tried now."""

    def __init__(self, config: Config, by: str | None = None) -> None:
        self.path = socket_path(config.data_dir)
        self.by = by

    def notify(self, *connectors: str) -> None:
        self._wake(connectors)

    def notify_all(self) -> None:
        self._wake(())

    def _wake(self, connectors: tuple[str, ...]) -> None:
        args: dict[str, Any] = {"connector": connectors[0]} if len(connectors) == 1 else {}
        args.update({"clear_down": self.by is not None, "by": self.by})
        try:
            request(self.path, "wake", args, timeout=NUDGE_TIMEOUT)
        except (OSError, ValueError):
            pass  # no service runs (or it is stopping): it reads the queue when it runs
        except RuntimeError as exc:
            click.echo(f"mailgate: the service did not take the wake-up: {exc}", err=True)


@dataclass(frozen=True, slots=True)
class _Session:
    """One command's queue store (with its effects) and event log."""

    store: QueueStore
    events: EventLog
    nudge: ServiceNudge

    def result(self, future: Future[T]) -> T:
        """A change's result; its errors become clear messages (exit 75 for a live lease)."""
        try:
            return future.result()
        except admin.LeaseHeld as exc:
            raise LeaseHeldError(str(exc)) from None
        except (admin.AdminError, StoreError) as exc:
            raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def _session(
    config: Config, by: str | None = None, events: EventLog | None = None
) -> Iterator[_Session]:
    """The queue store of one command; `events` is the caller's log (else one is opened
    for the command, and closed after it)."""
    path = config.queue_path
    if not config.queue.url and not path.is_file():
        raise click.ClickException(f"no queue at {path} (no service has run on this data dir)")
    backend = open_backend(config.queue, config.data_dir)
    try:
        writer = DirectWriter(backend)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    log = events if events is not None else wiring.open_events(config, stderr=False)
    nudge = ServiceNudge(config, by)
    try:
        store = wiring.queue_store(config, writer, backend)
        store.use_reports(wiring.bounce_generator(config))
        store.effects = Effects(nudge, log)
        yield _Session(store, log, nudge)
    finally:
        writer.close()
        if events is None:
            log.close()


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


def _changed(
    session: _Session,
    result: admin.Changed,
    verb: str,
    event: catalog.EventType,
    connector: str | None,
    fates: list[inflight.Fate] | None = None,
) -> Outcome:
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
        session.events.emit(event, **fields)
    item: dict[str, Any] = {
        "queue_id": result.queue_id,
        "connector": connector,
        verb: count,
        "skipped_active": result.skipped,
    }
    if fates:
        item["revoked"] = inflight.as_json(fates)
    text = f"{scope}: {count} recipient(s) {verb}" + inflight.describe(fates, "hold")
    if result.skipped:
        text += f"; {result.skipped} being delivered now left alone"
    return Outcome(text, item)


def _bulk_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)
    func = click.option("--connector", help="Only recipients for this connector.")(func)
    func = click.option("--all", "all_", is_flag=True, help="Every message in the queue.")(func)
    return click.argument("queue_id", metavar="ID", required=False)(func)


@click.command()
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
    retry_messages(get_config(config_path, data_dir), queue_id, connector).echo(as_json)


def retry_messages(
    config: Config,
    queue_id: str | None,
    connector: str | None,
    events: EventLog | None = None,
    by: str = "mailgate queue retry",
) -> Outcome:
    """`queue retry` of one message (or, with None, all), maybe of one connector only."""
    with _session(config, by=by, events=events) as session:
        # The connectors forget a down marking before the recipients become due, so that
        # none is deferred at once in between, and again after (the commit's wake-up).
        session.nudge.notify(*(() if connector is None else (connector,)))
        result = session.result(session.store.retry(queue_id, connector))
        return _changed(session, result, "retried", catalog.QUEUE_RETRIED, connector)


@click.command()
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
    hold_messages(get_config(config_path, data_dir), queue_id, connector).echo(as_json)


def hold_messages(
    config: Config, queue_id: str | None, connector: str | None, events: EventLog | None = None
) -> Outcome:
    """`queue hold` of one message (taken from its threads) or, with None, all."""
    with _session(config, events=events) as session:
        held = session.store.hold(queue_id, connector, revoke_leases=queue_id is not None)
        result = session.result(held)
        fates = inflight.cancel_attempts(config, result.revoked)
        inflight.report(config, fates, "hold")
        return _changed(session, result, "held", catalog.MESSAGE_HELD, connector, fates)


@click.command()
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
    release_messages(get_config(config_path, data_dir), queue_id, connector).echo(as_json)


def release_messages(
    config: Config,
    queue_id: str | None,
    connector: str | None,
    events: EventLog | None = None,
    by: str = "mailgate queue release",
) -> Outcome:
    """`queue release` of one message (quarantined recipients too) or, with None, all."""
    with _session(config, by=by, events=events) as session:
        result = session.result(session.store.release(queue_id, connector))
        return _changed(session, result, "released", catalog.MESSAGE_RELEASED, connector)


def _finished(
    session: _Session, result: admin.Finished, event: catalog.EventType, fields: dict[str, Any]
) -> None:
    """The events of a delete or return, then that of the finished message (its report,
    and the wake-up of the report's connector, were the commit's)."""
    session.events.emit(event, queue_id=result.queue_id, **fields)
    if result.finished and not result.removed:
        session.events.emit(catalog.MESSAGE_DONE, queue_id=result.queue_id)


def _take_over(
    config: Config, session: _Session, queue_id: str, command: str
) -> list[inflight.Fate]:
    """Before a delete or return: if the message is being delivered, hold it, take it from
    its threads, and learn (and report, event 4020) what their attempts came to."""
    revoked = session.result(session.store.take_over(queue_id))
    fates = inflight.cancel_attempts(config, revoked)
    inflight.report(config, fates, command)
    return fates


@click.command()
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
    delete_message(get_config(config_path, data_dir), queue_id, ndr).echo(as_json)


def delete_message(
    config: Config, queue_id: str, ndr: bool, events: EventLog | None = None
) -> Outcome:
    """`queue delete` of one message, with a report to its sender if `ndr`."""
    with _session(config, events=events) as session:
        fates = _take_over(config, session, queue_id, "delete")
        result = session.result(session.store.delete(queue_id, ndr=ndr))
        if not ndr:
            report = "none (not asked for)"
        elif not result.closed:
            report = "none (every recipient was final already)"
        else:
            report = _report(result.done)
        fields = {"open": result.closed, "report": report}
        _finished(session, result, catalog.MESSAGE_DELETED, fields)
    text = (
        f"{result.queue_id}: deleted ({result.closed} recipient(s) not yet final); "
        f"report: {report}" + inflight.describe(fates, "delete")
    )
    return Outcome(text, _finished_json(result, "deleted", fates))


@click.command("bounce")
@click.argument("queue_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@config_options
def bounce_(queue_id: str, as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Return a message to its sender: open recipients are bounced (554 5.7.0) and a
    non-delivery report is queued. A recipient being delivered right now is taken from
    its thread first: one its attempt delivered after all is not reported as failed."""
    return_message(get_config(config_path, data_dir), queue_id).echo(as_json)


def return_message(config: Config, queue_id: str, events: EventLog | None = None) -> Outcome:
    """`queue bounce`: return one message to its sender with a non-delivery report."""
    with _session(config, events=events) as session:
        fates = _take_over(config, session, queue_id, "bounce")
        try:
            result = session.result(session.store.return_to_sender(queue_id))
        except click.ClickException as exc:  # e.g. nothing left to return: say why
            raise type(exc)(exc.message + inflight.describe(fates, "bounce")) from None
        report = _report(result.done)
        fields = {"count": result.closed, "report": report}
        _finished(session, result, catalog.MESSAGE_RETURNED, fields)
    text = (
        f"{result.queue_id}: returned to the sender, {result.closed} recipient(s) bounced; "
        f"report: {report}" + inflight.describe(fates, "bounce")
    )
    return Outcome(text, _finished_json(result, "returned", fates))


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
