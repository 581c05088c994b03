"""Who may read and who may act on the admin listener: the token, its cookie, CSRF.

Without a token (loopback only, the configuration insists) everything can be read and
nothing changed: the dashboard is read-only. With a token, every request must carry
it, as `Authorization: Bearer TOKEN` (scripts, Prometheus) or as the session cookie
that /login gives for it (a browser). The cookie holds HMAC(token, "session"), never
the token: it is worthless once the token changes, and HttpOnly and SameSite=Strict.
A change (POST) made with the cookie must also carry the CSRF field,
HMAC(token, "csrf"), which a page of another site cannot read; one made with the
header needs none (a browser never adds that header by itself). Every comparison is
in constant time. Nothing here logs: no token or cookie reaches a log or an event.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request

COOKIE = "mailgate_session"


def _mac(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def session_value(token: str) -> str:
    return _mac(token, "session")


def csrf_value(token: str) -> str:
    return _mac(token, "csrf")


def same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def bearer_ok(request: Request, token: str) -> bool:
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and same(given.strip(), token)


def cookie_ok(request: Request, token: str) -> bool:
    given = request.cookies.get(COOKIE)
    return given is not None and same(given, session_value(token))


def may_read(request: Request, token: str) -> bool:
    return not token or bearer_ok(request, token) or cookie_ok(request, token)


def may_act(request: Request, token: str, form: dict[str, str]) -> str | None:
    """None if this POST may change the queue, else why not (for the refusal and its event)."""
    if not token:
        return "the dashboard is read-only: no [admin] token is configured"
    if bearer_ok(request, token):
        return None
    if not cookie_ok(request, token):
        return "not logged in: give the token"
    if not same(form.get("csrf", ""), csrf_value(token)):
        return "missing or wrong CSRF field"
    return None
