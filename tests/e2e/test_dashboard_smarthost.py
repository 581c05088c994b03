"""The dashboard in a real headless Chromium against a real wedged smarthost: an aiosmtpd
sink that accepts the session and never answers MAIL (tests/support/sink.py). The
smarthost thread stalls, the supervisor aborts its connection, and mail for the relay
backs up. The overview's chart marks the stall (counted from the stall events, since the
thread is freed within a second, faster than the chart's samples) while the smarthost's
queue grows; the threads page marks the thread that stalled; released, the smarthost
takes the backlog."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.support.browser import screenshot
from tests.support.process import DEFAULT_CONFIG, Mailgate, free_port, wait_for
from tests.support.sink import Sink

FRIEND = "friend@elsewhere.org"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


def send(mg: Mailgate, count: int, first: int = 0) -> None:
    with smtplib.SMTP("127.0.0.1", mg.port, timeout=30) as client:
        for n in range(first, first + count):
            client.sendmail("alice@po1.net1.example.test", [FRIEND], f"Subject: r{n}\r\n\r\nx\r\n")


def length(page: Page, base: str) -> int:
    page.goto(base + "/")
    row = page.locator("#queues tr[data-connector=smarthost] td.length")
    return int(row.inner_text()) if row.count() else 0


def test_a_wedged_smarthost_shows_as_a_growing_backlog_and_a_marked_stall(
    tmp_path: Path, sink: Sink, browser: Browser, results: Path
) -> None:
    config = DEFAULT_CONFIG + (
        f'\n[smarthost]\nhost = "127.0.0.1"\nport = {sink.port}\nthreads = 1\n'
        '\n[supervise]\nstall_after = "2s"\n'
    )
    mg = Mailgate(tmp_path, config=config)
    admin = free_port()
    base = f"http://127.0.0.1:{admin}"
    sink.hang("MAIL")
    mg.start("--admin-listen", f"127.0.0.1:{admin}")
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    try:
        send(mg, 3)
        wait_for(lambda: sink.hanging == 1, 20, 0.1, "the smarthost session hung on MAIL")
        first = wait_for(lambda: (n := length(page, base)) >= 3 and n, 20, 0.5, "3 queued")

        def stall_marked() -> bool:
            page.goto(base + "/")
            return page.locator("#chart rect.stall").count() > 0

        wait_for(stall_marked, 60, 1.0, "the stall marked on the chart")
        send(mg, 4, first=3)
        wait_for(lambda: length(page, base) > first, 20, 0.5, "the backlog to grow")
        screenshot(page, results, "smarthost-overview")

        page.goto(base + "/threads")
        row = page.locator("#threads tr[data-thread$='/smarthost-1']")
        assert row.count() == 1
        assert row.get_attribute("class") in ("bad", "warn"), row.inner_text()
        assert "stalled" in row.inner_text()
        screenshot(page, results, "smarthost-threads")

        sink.release()
        mg.cli("queue", "retry", "--all", check=True)
        sink.wait_messages(7)
        wait_for(lambda: length(page, base) == 0, 30, 0.5, "the backlog delivered")
    finally:
        sink.release()
        page.close()
        mg.close()
