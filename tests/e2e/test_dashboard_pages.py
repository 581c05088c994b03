"""The dashboard in a real headless Chromium, against a real `mailgate run` (master with
workers) with a token, real mail flowing and a wedged destination: every delivery to Bob
hangs at the `interchange.deliver` fault point, so his mail backs up behind two stalled
delivery threads while Alice's is delivered.

The overview shows the backlog growing and the stall marked on its chart; the threads
page shows the stalled threads in red; a hold and a release from a message's page change
the queue (checked with `mailgate queue show`) and are events naming the client; an
action without the token, or with the cookie but no CSRF field, is refused (403, event
7001) and changes nothing; the events page follows new events live; the track box finds
a message; a header holding <script> stays text. Each page is saved as a screenshot
(tests/support/browser.py says where)."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.support.browser import screenshot
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

ALICE = "alice@po1.net1.example.test"
BOB = "bob@po1.net1.example.test"
TOKEN = "dashboard-token-7c1e5b2a9d"
CONFIG = (
    DEFAULT_CONFIG
    + f"""
[admin]
token = "{TOKEN}"

[supervise]
stall_after = "2s"
stall_grace = "1h"
"""
)
FAULTS = f"interchange.deliver[{BOB}]=hang"
HOSTILE = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'


class Service:
    def __init__(self, mg: Mailgate, admin: int) -> None:
        self.mg = mg
        self.base = f"http://127.0.0.1:{admin}"
        self.sent: dict[str, list[str]] = {ALICE: [], BOB: []}

    def send(self, rcpt: str, subject: str, extra: str = "") -> str:
        """One message; its queue id (from the reply to DATA)."""
        with smtplib.SMTP("127.0.0.1", self.mg.port, timeout=30) as client:
            client.ehlo("client.test")
            client.mail("sender@example.org")
            assert client.rcpt(rcpt)[0] == 250
            code, reply = client.data(f"Subject: {subject}\r\n{extra}\r\nbody\r\n")
        assert code == 250, reply
        queue_id = reply.decode().rsplit(" ", 1)[1]
        self.sent[rcpt].append(queue_id)
        return queue_id

    def shown(self, queue_id: str) -> dict[str, Any]:
        result = self.mg.cli("queue", "show", queue_id, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def state(self, queue_id: str) -> str:
        return str(self.shown(queue_id)["recipients"][0]["state"])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    mg = Mailgate(tmp_path_factory.mktemp("dashboard"), config=CONFIG)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/BOB")
    admin = free_port()
    mg.start("--admin-listen", f"127.0.0.1:{admin}", env={"MAILGATE_FAULTS": FAULTS})
    try:
        yield Service(mg, admin)
    finally:
        mg.close()


@pytest.fixture(scope="module")
def context(browser: Browser, service: Service) -> Iterator[BrowserContext]:
    """A browser session logged in with the token (through the login form)."""
    ctx = browser.new_context(viewport={"width": 1100, "height": 760})
    page = ctx.new_page()
    page.goto(service.base + "/")
    assert page.locator("input[name=token]").count() == 1, "a page without login asks for it"
    page.fill("input[name=token]", "wrong")
    page.click("button:has-text('Log in')")
    assert page.locator("input[name=token]").count() == 1, "a wrong token is refused"
    page.fill("input[name=token]", TOKEN)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("#health")
    page.close()
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    yield page
    page.close()


def queue_length(page: Page, base: str) -> int:
    page.goto(base + "/")
    return int(page.locator("#queues tr[data-connector=postoffice] td.length").inner_text())


def test_overview_shows_the_backlog_growing_and_the_stall_marked(
    service: Service,
    page: Page,
    results: Path,
) -> None:
    for n in range(3):
        service.send(ALICE, f"alice {n}")
    wait_for(lambda: len(service.mg.delivered("NET1", "PO1", "ALICE")) == 3, 30, 0.2, "Alice")
    page.goto(service.base + "/")
    assert page.locator("#health .healthy").count() == 1

    for n in range(3):
        service.send(BOB, f"bob {n}")
    first = wait_for(lambda: (n := queue_length(page, service.base)) >= 3 and n, 30, 0.5, "3")
    for n in range(3, 6):
        service.send(BOB, f"bob {n}")
    wait_for(lambda: queue_length(page, service.base) > first, 30, 0.5, "the backlog to grow")

    def stall_marked() -> bool:
        page.goto(service.base + "/")
        return page.locator("#chart rect.stall").count() > 0

    wait_for(stall_marked, 60, 1.0, "a stall marked on the chart")

    def unhealthy() -> bool:  # the stall event can come before the workers' next heartbeat
        page.goto(service.base + "/")
        return page.locator("#health .unhealthy").count() == 1

    wait_for(unhealthy, 30, 0.5, "the overview to say unhealthy")
    assert "stalled" in page.locator("#reasons").inner_text()
    assert page.locator("#chart polyline.queued").count() == 1
    assert page.locator("#chart polyline.rate").count() == 1
    screenshot(page, results, "overview")


def test_threads_page_shows_the_stalled_threads(
    service: Service,
    page: Page,
    results: Path,
) -> None:
    def stalled_rows() -> int:
        page.goto(service.base + "/threads")
        return page.locator("#threads tr.bad").count()

    wait_for(lambda: stalled_rows() >= 2, 60, 1.0, "both delivery threads stalled")
    bad = page.locator("#threads tr.bad")
    for n in range(bad.count()):
        row = bad.nth(n)
        assert row.get_attribute("data-state") in ("stalled", "abandoned", "failed")
        assert BOB in row.inner_text()  # its current work: the recipient it hangs on
    assert page.locator("#troubled").count() == 1
    assert page.locator("#attention tr.bad").count() == bad.count(), "listed first too"
    assert page.locator("#threads tr[data-thread='master/admin']").count() == 1
    assert page.locator("#threads svg.spark").count() > 10
    screenshot(page, results, "threads")


def waiting(service: Service) -> str:
    """One of Bob's messages that no thread holds (queued behind the stalled ones)."""
    return str(
        wait_for(
            lambda: next((q for q in service.sent[BOB] if service.state(q) == "queued"), None),
            30, 0.5, "a queued message",
        )
    )  # fmt: skip


def test_hold_and_release_from_the_page_change_the_queue(
    service: Service,
    page: Page,
    results: Path,
) -> None:
    queue_id = waiting(service)
    page.goto(f"{service.base}/queue?recipient={BOB}&state=queued")
    assert page.locator(f"#messages tr[data-queue-id='{queue_id}']").count() == 1
    page.click(f"#messages a:has-text('{queue_id}')")
    page.wait_for_selector("#envelope")
    screenshot(page, results, "message")

    page.click("#actions button[value=hold]")
    assert "1 recipient(s) held" in page.locator("#flash").inner_text()
    assert service.state(queue_id) == "held"
    [event] = [e for e in service.mg.wait_events(7000) if e["fields"]["scope"] == queue_id]
    assert event["fields"]["action"] == "hold" and event["fields"]["client"] == "127.0.0.1"

    page.click("#actions button[value=release]")
    assert "1 recipient(s) released" in page.locator("#flash").inner_text()
    assert service.state(queue_id) == "queued"

    page.goto(f"{service.base}/queue?state=held")
    assert page.locator("#messages tr[data-queue-id]").count() == 0
    page.goto(f"{service.base}/queue?recipient={BOB}")
    screenshot(page, results, "queue")


def test_bulk_hold_of_selected_messages_and_release_of_every_message_of_a_connector(
    service: Service, page: Page
) -> None:
    page.goto(f"{service.base}/queue?recipient={BOB}&state=queued")
    boxes = page.locator("#messages input[name=id]")
    assert boxes.count() >= 2
    chosen = [str(boxes.nth(n).get_attribute("value")) for n in range(2)]
    for n in range(2):
        boxes.nth(n).check()
    page.click("#bulk button[value=hold]")
    assert page.locator("#flash").inner_text().count("1 recipient(s) held") == 2
    assert [service.state(q) for q in chosen] == ["held", "held"]
    scopes = {
        e["fields"]["scope"]
        for e in service.mg.wait_events(7000)
        if e["fields"]["action"] == "hold"
    }
    assert set(chosen) <= scopes

    page.goto(f"{service.base}/queue?connector=postoffice&state=held")
    assert page.locator("#messages tr[data-queue-id]").count() == 2
    page.click("#bulk-all button[value=release]")
    assert (
        "all messages via postoffice: 2 recipient(s) released"
        in page.locator("#flash").inner_text()
    )
    assert [service.state(q) for q in chosen] == ["queued", "queued"]


def test_an_action_without_the_token_or_csrf_is_refused(
    browser: Browser,
    service: Service,
    context: BrowserContext,
) -> None:
    queue_id = waiting(service)
    form = {"action": "hold", "id": queue_id, "back": "/queue"}
    stranger = browser.new_context()
    try:
        refused = stranger.request.post(service.base + "/queue/action", form=form)
        assert refused.status == 403, refused.text()
        assert stranger.request.get(service.base + "/status").status == 401
    finally:
        stranger.close()
    no_csrf = context.request.post(service.base + "/queue/action", form=form)  # the cookie only
    assert no_csrf.status == 403 and "CSRF" in no_csrf.text()
    reasons = [e["fields"]["reason"] for e in service.mg.wait_events(7001, count=3)]
    assert "wrong token" in reasons, "the failed login of the context fixture"
    assert any("token" in r for r in reasons) and any("CSRF" in r for r in reasons), reasons
    assert service.state(queue_id) == "queued", "nothing was changed"
    bearer = context.request.post(
        service.base + "/queue/action", form=form, headers={"Authorization": f"Bearer {TOKEN}"},
        max_redirects=0,
    )  # fmt: skip
    assert bearer.status == 303, "a script with the token needs no CSRF field"
    assert service.state(queue_id) == "held"
    assert "1 recipient(s) released" in service.mg.cli("queue", "release", queue_id).stdout


def test_events_page_follows_new_events_live(
    service: Service,
    context: BrowserContext,
    results: Path,
) -> None:
    watcher = context.new_page()
    actor = context.new_page()
    try:
        watcher.goto(service.base + "/events?category=Control")
        watcher.wait_for_selector("#follow:not([disabled])")
        watcher.evaluate("window.__notReloaded = true")
        before = watcher.locator("#events tr[data-event='7000']").count()
        queue_id = waiting(service)
        actor.goto(f"{service.base}/queue/{queue_id}")
        actor.click("#actions button[value=hold]")
        actor.click("#actions button[value=release]")
        wait_for(
            lambda: watcher.locator("#events tr[data-event='7000']").count() >= before + 2,
            30, 0.5, "the new events on the page",
        )  # fmt: skip
        assert watcher.evaluate("window.__notReloaded") is True, "updated in place"
        assert queue_id in watcher.locator("#events").inner_text()
        screenshot(watcher, results, "events")
    finally:
        watcher.close()
        actor.close()


def test_track_box_shows_a_message_life(
    service: Service,
    page: Page,
    results: Path,
) -> None:
    queue_id = service.sent[ALICE][0]
    page.goto(service.base + "/")
    page.fill("header input[name=key]", queue_id)
    page.press("header input[name=key]", "Enter")
    page.wait_for_selector(f"section.tracked[data-queue-id='{queue_id}']")
    text = page.locator("section.tracked").inner_text()
    assert ALICE in text and "delivered" in text
    screenshot(page, results, "track")
    page.goto(f"{service.base}/track?key={BOB}")
    assert page.locator("section.tracked").count() == len(service.sent[BOB])


def test_a_hostile_header_stays_text(service: Service, page: Page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    queue_id = service.send(BOB, HOSTILE, extra=f"X-Evil: {HOSTILE}\r\n")
    for path in (f"/queue/{queue_id}", f"/track?key={queue_id}", f"/queue?recipient={BOB}"):
        page.goto(service.base + path)
        assert page.evaluate("window.__pwned") is None, path
    page.goto(f"{service.base}/queue/{queue_id}")
    assert HOSTILE in page.locator("#headers").inner_text()
    assert page.locator("#headers script, #headers img").count() == 0
    assert not dialogs
