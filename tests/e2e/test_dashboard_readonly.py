"""The dashboard without a token, in a real headless Chromium with JavaScript off, against
a real `mailgate run --single-process`: every page reads (server-rendered), no page offers
an action, and a change posted anyway is refused (403, event 7001) and changes nothing.
The admin thread is a supervised thread like any other, and /metrics, /healthz and /status
answer as before beside the pages."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.support.browser import screenshot
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for

ALICE = "alice@po1.net1.example.test"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mailgate, str]]:
    config = DEFAULT_CONFIG + '\n[queue]\nretry_min = "1h"\n'
    mg = Mailgate(tmp_path_factory.mktemp("readonly"), config=config)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    admin = free_port()
    mg.start("--single-process", "--admin-listen", f"127.0.0.1:{admin}")
    try:
        yield mg, f"http://127.0.0.1:{admin}"
    finally:
        mg.close()


@pytest.fixture(scope="module")
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1100, "height": 760}
    )
    page = context.new_page()
    yield page
    context.close()


def send(mg: Mailgate, rcpt: str, subject: str) -> str:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("sender@example.org")
        assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(f"Subject: {subject}\r\n\r\nbody\r\n")
    assert code == 250
    return reply.decode().rsplit(" ", 1)[1]


def test_every_page_reads_without_javascript_and_offers_no_action(
    service: tuple[Mailgate, str],
    page: Page,
    results: Path,
) -> None:
    mg, base = service
    queue_id = send(mg, ALICE, "read me")
    wait_for(lambda: mg.delivered("NET1", "PO1", "ALICE"), 30, 0.2, "the delivery")
    page.goto(base + "/")
    assert page.locator("header .readonly").count() == 1
    assert page.locator("#queues tr[data-connector=postoffice]").count() == 1
    assert page.locator("#nodes tr[data-node].here[data-state=alive]").count() == 1, "one node"
    page.goto(base + "/threads")
    rows = page.locator("#threads tr[data-thread]")
    names = [str(rows.nth(n).get_attribute("data-thread")) for n in range(rows.count())]
    threads = {n.split("/", 1)[1] for n in names}
    assert {"admin", "smtp", "postoffice-1", "supervisor"} <= threads, names
    page.goto(f"{base}/queue?state=delivered")
    assert page.locator(f"#messages tr[data-queue-id='{queue_id}']").count() == 1
    assert page.locator("#bulk button, #bulk-all").count() == 0, "no action offered"
    page.goto(f"{base}/queue/{queue_id}")
    assert page.locator("#envelope").count() == 1 and page.locator("#actions").count() == 0
    assert "sender@example.org" in page.locator("#envelope").inner_text()
    assert "delivered" in page.locator("#recipients").inner_text()
    page.goto(f"{base}/events?id=2448")  # Sent
    assert page.locator("#events tr[data-event='2448']").count() >= 1
    page.goto(f"{base}/track?key={queue_id}")
    assert "delivered" in page.locator("section.tracked").inner_text()
    screenshot(page, results, "readonly")


def test_a_change_posted_anyway_is_refused_and_changes_nothing(
    service: tuple[Mailgate, str],
) -> None:
    mg, base = service
    queue_id = send(mg, ALICE, "keep me")
    wait_for(lambda: len(mg.delivered("NET1", "PO1", "ALICE")) == 2, 30, 0.2, "the delivery")
    body = f"action=delete&id={queue_id}".encode()
    request = urllib.request.Request(base + "/queue/action", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert "read-only" in refused.value.read().decode()
    [event] = mg.wait_events(7001)
    assert event["fields"]["action"] == "delete" and event["fields"]["client"] == "127.0.0.1"
    shown = json.loads(mg.cli("queue", "show", queue_id, "--json", check=True).stdout)
    assert shown["queue_id"] == queue_id, "still there"
    with urllib.request.urlopen(base + "/healthz", timeout=10) as reply:
        assert json.loads(reply.read()) == {"healthy": True, "reasons": []}
