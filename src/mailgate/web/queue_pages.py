"""The queue viewer: filtered, paged lists; one message; retry, hold, release, delete, bounce.

Reading goes through the surface's read-only QueueReader: `list_messages` with keyset
paging (the next page starts after the last queue id shown), PAGE rows at a time, so
a page costs the same with a hundred thousand messages queued and the queue is never
loaded into memory. One message shows its envelope, headers (from the stored body's
head, at most HEAD_BYTES), recipients, and every attempt with the remote reply.

Changes run the command line's own functions (cli/queue_act.py) in this thread, one
transaction each, with the service's event log, so they emit the same queue events
(4010 and its neighbours) and take a message being delivered from its thread as
`mailgate queue hold` does. They need the token (auth.py: the header, or the cookie
and the CSRF field); each is event 7000 naming the action, its scope and the client
address, a refusal is 7001 (403), a failure 7002. The answer is a redirect back
(POST/redirect/GET) with what happened in the page's flash line.
"""

from __future__ import annotations

import time
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any
from urllib.parse import parse_qsl, urlencode

import click
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from mailgate.cli import queue_act
from mailgate.errors import MailgateError
from mailgate.model import RecipientState
from mailgate.observe import catalog
from mailgate.web import auth
from mailgate.web.context import AdminContext, context_of
from mailgate.web.pages import first_of, form_pairs, render

PAGE = 50
HEAD_BYTES = 64 * 1024
MAX_BULK = PAGE
ACTIONS = ("retry", "hold", "release", "delete", "bounce")
BULK_ALL = ("retry", "hold", "release")  # those that take "every message of a connector"
FILTERS = ("connector", "state", "older_than", "sender", "recipient")
LIST_STATES = [s.value for s in RecipientState]


def _filters(request: Request) -> dict[str, str]:
    query = request.query_params
    return {k: query[k].strip() for k in FILTERS if query.get(k, "").strip()}


def _older_than(value: str | None) -> float | None:
    """`older_than` in minutes (a number), as an absolute received-before time."""
    if not value:
        return None
    try:
        minutes = float(value)
    except ValueError:
        raise ValueError(f"older than: {value!r} is not a number of minutes") from None
    return time.time() - minutes * 60


async def queue_list(request: Request) -> Response:
    ctx = context_of(request)
    filters = _filters(request)
    after = request.query_params.get("after") or None
    error = None
    rows: list[Any] = []
    try:
        state = filters.get("state")
        if state is not None and state not in LIST_STATES:
            raise ValueError(f"state: {state!r} is none of {', '.join(LIST_STATES)}")
        rows = ctx.queue().list_messages(
            connector=filters.get("connector"),
            state=state,
            received_before=_older_than(filters.get("older_than")),
            sender=filters.get("sender"),
            recipient=filters.get("recipient"),
            limit=PAGE + 1,
            after=after,
        )
    except ValueError as exc:
        error = str(exc)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    next_link = None
    if more:
        next_link = "/queue?" + urlencode({**filters, "after": rows[-1].queue_id})
    return render(
        request,
        "queue.html",
        "Queue",
        live_updates=False,  # a list one selects from is not replaced under the pointer
        rows=rows,
        filters=filters,
        error=error,
        after=after,
        first_link="/queue?" + urlencode(filters),
        next_link=next_link,
        connectors=ctx.view.connector_names(),
        states=LIST_STATES,
        actions=ACTIONS,
        bulk_all=BULK_ALL,
        now=time.time(),
        back=str(request.url.path) + ("?" + request.url.query if request.url.query else ""),
    )


def _headers(body: bytes | None) -> list[tuple[str, str]]:
    if body is None:
        return []
    head = body[:HEAD_BYTES]
    message = BytesHeaderParser(policy=compat32).parsebytes(head)
    return [(str(k), str(v)) for k, v in message.items()]


async def message_page(request: Request) -> Response:
    ctx = context_of(request)
    queue_id = request.path_params["queue_id"]
    reader = ctx.queue()
    history = reader.message_history(queue_id)
    if history is None:
        found = reader.find(queue_id, 1)
        history = reader.message_history(found[0]) if found else None
    if history is None:
        return render(
            request, "message.html", f"No message {queue_id}", 404, message=None, key=queue_id
        )
    return render(
        request,
        "message.html",
        f"Message {history.queue_id}",
        message=history,
        headers=_headers(reader.body(history.queue_id)),
        actions=ACTIONS,
        now=time.time(),
        back=f"/queue/{history.queue_id}",
    )


def _run(ctx: AdminContext, action: str, queue_id: str | None, connector: str | None) -> str:
    """One change, by the command line's own function; its text."""
    assert ctx.config is not None, "actions need the service's configuration"
    config, events, by = ctx.config, ctx.events, "the dashboard"
    match action:
        case "retry":
            return queue_act.retry_messages(config, queue_id, connector, events, by).text
        case "hold":
            return queue_act.hold_messages(config, queue_id, connector, events).text
        case "release":
            return queue_act.release_messages(config, queue_id, connector, events, by).text
        case "delete" if queue_id is not None:
            return queue_act.delete_message(config, queue_id, False, events).text
        case "bounce" if queue_id is not None:
            return queue_act.return_message(config, queue_id, events).text
    raise ValueError(f"{action} needs a queue id")


def _back(target: str, flash: str, error: bool) -> Response:
    """303 to the page the form was on (never off this listener), saying what happened."""
    if not target.startswith("/") or target.startswith("//"):
        target = "/queue"
    path, _, query = target.partition("?")
    params = [(k, v) for k, v in parse_qsl(query) if k not in ("flash", "error")]
    params.append(("flash", flash[:800]))
    if error:
        params.append(("error", "1"))
    return RedirectResponse(path + "?" + urlencode(params), 303)


async def action(request: Request) -> Response:
    ctx = context_of(request)
    client = request.client.host if request.client else "unknown"
    pairs = await form_pairs(request)
    fields = first_of(pairs)
    verb = fields.get("action", "")
    why = auth.may_act(request, ctx.token, fields)
    if why is None and verb not in ACTIONS:
        why = f"unknown action {verb[:40]!r}"
    if why is not None:
        ctx.emit(catalog.DASHBOARD_REFUSED, action=verb[:40] or "-", client=client, reason=why)
        return Response(f"refused: {why}\n", 403, headers={"Content-Type": "text/plain"})
    ids = [v.strip() for k, v in pairs if k == "id" and v.strip()][:MAX_BULK]
    connector = fields.get("connector") or None
    targets: list[str | None] = list(ids)
    if not ids and fields.get("all") == "1" and verb in BULK_ALL:
        targets = [None]  # every message (of the connector, if one is named)
    if not targets:
        return _back(fields.get("back", "/queue"), f"{verb}: nothing selected", True)
    said: list[str] = []
    failed = False
    for queue_id in targets:
        scope = queue_id or (f"all messages via {connector}" if connector else "all messages")
        try:
            outcome = _run(ctx, verb, queue_id, connector if queue_id is None else None)
        except (click.ClickException, MailgateError, ValueError) as exc:
            reason = exc.message if isinstance(exc, click.ClickException) else str(exc)
            ctx.emit(
                catalog.DASHBOARD_ACTION_FAILED,
                action=verb, scope=scope, client=client, reason=reason,
                **({"queue_id": queue_id} if queue_id else {}),
            )  # fmt: skip
            said.append(f"{scope}: {reason}")
            failed = True
            continue
        one = {"queue_id": queue_id} if queue_id else {}
        ctx.emit(
            catalog.DASHBOARD_ACTION,
            action=verb, scope=scope, client=client, outcome=outcome, **one,
        )  # fmt: skip
        said.append(outcome)
    return _back(fields.get("back", "/queue"), "; ".join(said), failed)


def routes() -> list[Route]:
    return [
        Route("/queue", queue_list),
        Route("/queue/action", action, methods=["POST"]),
        Route("/queue/{queue_id}", message_page),
    ]
