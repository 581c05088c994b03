"""The dashboard's frame and first pages: Overview, Threads, the login, the static files.

Pages are Jinja2 templates (web/templates, package data) rendered on the server with
autoescaping on: every value from the queue, a message or a client is text, never
markup (a header holding `<script>` shows as those characters). Each page reads
without JavaScript; on the overview, threads and events pages dash.js re-fetches the
page's `#live` part every 2 s (the queue list is not refreshed under a selection). The
two static files are read once from the package and served from memory.

Overview: health and its reasons, rates per second, each connector's queue, and the
last hour's chart (charts.py) of queue length and delivery rate with stalls marked.
Threads: every process and thread with its state, current work and for how long, and
% CPU with a one-minute sparkline; stalled, abandoned, failed and restarting threads
(and those that stalled in the last minutes) are red or orange rows, listed first under
"Needs attention". Both show every node sharing the queue (nodes.py, from the control
surface's answer, as `ctl status` has it): the Overview a Nodes panel, always, one row on
a single machine (so a failing heart-beat shows there as its growing age, and the page
keeps its shape when a second node joins); Threads this node's threads as above, then
each other node's, a dead one red with the work it held marked released.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from mailgate.cli.top import age  # the same durations as `mailgate top`
from mailgate.control.surface import STATES
from mailgate.observe import catalog
from mailgate.web import auth
from mailgate.web.charts import overview_chart, sparkline
from mailgate.web.context import AdminContext, context_of, text
from mailgate.web.nodes import DEAD_EVENT, node_rows, summary
from mailgate.web.samples import SAMPLE_EVERY, process_name, thread_key

NAV = [("/", "Overview"), ("/threads", "Threads"), ("/queue", "Queue"), ("/events", "Events")]
BAD_STATES = ("stalled", "abandoned", "failed")
WARN_STATES = ("restarting",)
MAX_FORM = 64 * 1024

ENV = Environment(
    loader=PackageLoader("mailgate.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
STATIC = {
    name: (resources.files("mailgate.web").joinpath("static", name).read_bytes(), kind)
    for name, kind in (("dash.css", "text/css"), ("dash.js", "text/javascript"))
}


ENV.globals["age"] = age
ENV.filters["when"] = lambda ts: "-" if ts is None else time.strftime("%F %T", time.gmtime(ts))


def render(request: Request, template: str, title: str, code: int = 200, **values: Any) -> Response:
    """A page: the template with the frame's values (nav, login state, CSRF field)."""
    ctx = context_of(request)
    logged_in = bool(ctx.token) and auth.may_read(request, ctx.token)
    frame = {
        "title": title,
        "nav": NAV,
        "read_only": ctx.read_only,
        "logged_in": logged_in,
        "csrf": auth.csrf_value(ctx.token) if logged_in else "",
        "may_act": logged_in,
        "flash": request.query_params.get("flash"),
        "flash_error": request.query_params.get("error") == "1",
    }
    body = ENV.get_template(template).render(**frame, **values).encode()
    headers = {"Content-Security-Policy": "default-src 'self'; style-src 'self'"}
    return text(code, body, "text/html; charset=utf-8", **headers)


async def form_pairs(request: Request) -> list[tuple[str, str]]:
    """A POST's url-encoded fields, in order, at most MAX_FORM bytes."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise ValueError("form too large")
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


def first_of(pairs: list[tuple[str, str]]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def login_form(
    request: Request, code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    path = request.url.path
    response = render(request, "login.html", "Log in", code, next=path if path != "/login" else "/")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


async def login(request: Request) -> Response:
    ctx = context_of(request)
    if not ctx.token:
        return RedirectResponse("/", 303)  # nothing to log in to: the dashboard is read-only
    if request.method == "GET":
        return login_form(request)
    fields = first_of(await form_pairs(request))
    if not auth.same(fields.get("token", ""), ctx.token):
        client = request.client.host if request.client else "unknown"
        ctx.emit(catalog.DASHBOARD_REFUSED, action="login", client=client, reason="wrong token")
        return login_form(request, 401)
    target = fields.get("next", "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"  # never a redirect off this listener
    response = RedirectResponse(target, 303)
    response.set_cookie(
        auth.COOKIE, auth.session_value(ctx.token), httponly=True, samesite="strict", path="/"
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(auth.COOKIE, path="/")
    return response


async def static(request: Request) -> Response:
    found = STATIC.get(request.path_params["name"])
    if found is None:
        return text(404, b"not found\n")
    return Response(found[0], headers={"Content-Type": found[1], "Cache-Control": "max-age=300"})


def this_node(ctx: AdminContext) -> str:
    """The name of the node serving the page (it heart-beats under it)."""
    return ctx.view.process.config.service.node


async def overview(request: Request) -> Response:
    ctx = context_of(request)
    status = ctx.recent_status()
    nodes = node_rows(status.get("nodes") or [], this_node(ctx))
    ring = ctx.samples
    chart = overview_chart(ring.samples(), ring.delivery_rates(), time.time())
    return render(
        request,
        "overview.html",
        "Overview",
        live_updates=True,
        status=status,
        rates=ring.rates(),
        states=STATES,
        chart=chart,
        samples=len(ring.samples()),
        every=SAMPLE_EVERY,
        nodes=nodes,
        node_counts=summary(nodes),
        dead_event=DEAD_EVENT,
    )


async def threads_page(request: Request) -> Response:
    ctx = context_of(request)
    processes = ctx.view.processes()
    rows: list[dict[str, Any]] = []
    for process in processes:
        for thread in process["threads"]:
            key = thread_key(process, thread)
            points = ctx.samples.cpu_percent(key)
            state = str(thread.get("state"))
            stalled_at = ctx.stalls.last_stall(process.get("pid"), thread.get("name")) if (
                ctx.stalls is not None
            ) else None  # fmt: skip
            if state in BAD_STATES:
                row = "bad"
            elif state in WARN_STATES or thread.get("abandoned") or stalled_at is not None:
                row = "warn"
            else:
                row = ""
            rows.append(
                {
                    **thread,
                    "process": process_name(process),
                    "pid": process["pid"],
                    "cpu": points[-1] if points else None,
                    "spark": sparkline(points, f"% CPU of {key}, last minute"),
                    "row": row,
                    "stalled_ago": None if stalled_at is None else time.time() - stalled_at,
                }
            )
    troubled = sum(1 for r in rows if r["row"])
    nodes = node_rows(ctx.view.nodes(), this_node(ctx))
    for node in (n for n in nodes if not n["here"]):
        for t in node["threads"]:  # other nodes' % CPU: between their heart-beats
            key = f"{t['process']}/{t['thread']}"
            points = ctx.samples.node_cpu_percent(node["name"], key)
            t["cpu"] = points[-1] if points else None
            t["spark"] = sparkline(points, f"% CPU of {key} on {node['name']}, last minute")
    return render(
        request,
        "threads.html",
        "Threads",
        live_updates=True,
        processes=processes,
        threads=rows,
        troubled=troubled,
        here=next((n for n in nodes if n["here"]), None),
        others=[n for n in nodes if not n["here"]],
        node_counts=summary(nodes),
        dead_event=DEAD_EVENT,
    )


def routes() -> list[Route]:
    return [
        Route("/", overview),
        Route("/threads", threads_page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/{name}", static),
    ]
