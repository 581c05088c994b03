"""Events and tracking: the indexed event store, filtered and followed; a message's life.

Events: filter by id (several, comma-separated), category, severity (at least:
warning means warning, error and critical) and age, newest first, at most LIMIT rows,
through the event store's indexed queries (observe/eventstore.py); severity becomes
the catalog's ids of those severities, so every query keeps its index. "Follow live"
re-fetches the page every 2 s, so new events appear at the top as they are stored.
Track: `mailgate track KEY`'s own collection (cli/track.py), from the queue and the
event store: received, each recipient, each attempt with its reply, the bounces.
Read-only; every value is escaped by the templates.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailgate.cli.track import collect
from mailgate.observe.catalog import CATALOG, Category, Severity
from mailgate.web.context import context_of
from mailgate.web.pages import render

LIMIT = 200
SEVERITIES = [s.value for s in Severity]


def _ids(text: str) -> list[int]:
    try:
        return sorted({int(part) for part in text.replace(",", " ").split()})
    except ValueError:
        raise ValueError(f"id: {text!r} is not a list of event ids") from None


def _severity_ids(at_least: str) -> list[int]:
    if at_least not in SEVERITIES:
        raise ValueError(f"severity: {at_least!r} is none of {', '.join(SEVERITIES)}")
    wanted = SEVERITIES[SEVERITIES.index(at_least) :]
    return sorted(e.id for e in CATALOG.values() if e.severity.value in wanted)


def query_of(params: dict[str, str], now: float) -> dict[str, Any]:
    """The event store query of the page's filters; ValueError names a bad one."""
    ids = _ids(params["id"]) if params.get("id") else []
    severity = params.get("severity")
    if severity and severity != SEVERITIES[0]:
        allowed = set(_severity_ids(severity))
        ids = [i for i in ids if i in allowed] if ids else sorted(allowed)
        if not ids:
            ids = [-1]  # nothing has both: an empty answer, through the index
    category = params.get("category")
    if category and category not in {c.value for c in Category}:
        raise ValueError(f"category: {category!r} is not an event category")
    since = None
    if params.get("since"):
        try:
            since = now - float(params["since"]) * 60
        except ValueError:
            raise ValueError(f"since: {params['since']!r} is not a number of minutes") from None
    return {
        "ids": ids,
        "categories": [category] if category else [],
        "since": since,
        "queue_id": params.get("queue_id") or None,
        "limit": LIMIT,
    }


async def events_page(request: Request) -> Response:
    ctx = context_of(request)
    params = {k: v.strip() for k, v in request.query_params.items() if v.strip()}
    rows: list[dict[str, Any]] = []
    error = None
    try:
        query = query_of(params, time.time())
        reader = ctx.event_reader()
        if reader is None:
            error = "no event store yet ([log] store_events)"
        else:
            rows = list(reversed(reader.query(**query)))
    except ValueError as exc:
        error = str(exc)
    return render(
        request,
        "events.html",
        "Events",
        live_updates=True,
        rows=rows,
        params=params,
        error=error,
        categories=[c.value for c in Category],
        severities=SEVERITIES,
        limit=LIMIT,
    )


async def track_page(request: Request) -> Response:
    ctx = context_of(request)
    key = request.query_params.get("key", "").strip()
    found: list[dict[str, Any]] = []
    if key:
        found = collect(key, ctx.queue(), ctx.event_reader())
    return render(
        request, "track.html", "Track", 200 if found or not key else 404, key=key,
        track_key=key, found=found, now=time.time(),
    )  # fmt: skip


def routes() -> list[Route]:
    return [Route("/events", events_page), Route("/track", track_page)]
