"""The dashboard's node view, in a real headless Chromium, against two real
`mailgate run --single-process` nodes on one PostgreSQL schema of the test's own.

Node beta starts first, alone, with its postoffice threads hanging right after a link
into the mailbox (fault point postoffice.linked): so it holds leases on the messages it
was given, and its heart-beat says which. Then node alpha starts with the admin
listener: its Overview lists both nodes alive (alpha marked as the one serving the
page), and its Threads page shows beta's threads, their work and % CPU, from the store. Beta
is killed with SIGKILL: within node_timeout + 5 s (+ one live refresh) the page, left
open, shows beta dead in red and its work released; alpha then delivers that work.
"""

from __future__ import annotations

import os
import signal
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.support.browser import VIEWPORT, screenshot
from tests.support.nodes import make_node, status
from tests.support.process import Mailgate, free_port, wait_for
from tests.support.stores import pg_schema

ALICE = "alice@po1.net1.example.test"
TIMEOUT = 3.0  # [queue] node_timeout of both nodes
REFRESH = 2.0  # dash.js re-fetches the live part this often
RED = "rgb(187, 0, 0)"  # dash.css: .node-dead


@pytest.fixture
def url() -> Iterator[str]:
    with pg_schema() as (_, schema_url):
        yield schema_url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    yield context.new_page()
    context.close()


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("sender@example.org", [ALICE], f"Subject: {subject}\r\n\r\nbody\r\n")


def busy_ids(observer: Mailgate, name: str) -> set[str]:
    """The queue ids node `name`'s heart-beat says its threads work on."""
    nodes = {n["name"]: n for n in status(observer)["nodes"]}
    work = nodes.get(name, {}).get("work") or []
    return {str(t["work"]["queue_id"]) for t in work if (t.get("work") or {}).get("queue_id")}


def test_the_dashboard_shows_every_node_and_a_killed_one_dead(
    tmp_path: Path, url: str, page: Page, results: Path
) -> None:
    shared = tmp_path / "postoffice"
    alpha = make_node(tmp_path / "alpha", "alpha", url, node_timeout=f"{TIMEOUT:g}s",
                      postoffice=shared)  # fmt: skip
    beta = make_node(tmp_path / "beta", "beta", url, node_timeout=f"{TIMEOUT:g}s",
                     postoffice=shared)  # fmt: skip
    try:
        assert alpha.cli("db", "upgrade").returncode == 0
        alpha.add_mailbox("MS:NET1/PO1/ALICE")
        beta.start("--single-process", env={"MAILGATE_FAULTS": "postoffice.linked=hang"})
        for n in range(2):
            send(beta.port, f"held by beta {n}")
        held = wait_for(lambda: busy_ids(beta, "beta"), 30, 0.2, "beta's heart-beat busy")
        admin = free_port()
        alpha.start("--single-process", "--admin-listen", f"127.0.0.1:{admin}")
        base = f"http://127.0.0.1:{admin}"

        # Overview: both nodes alive, alpha the one serving the page.
        page.goto(base + "/")
        nodes = page.locator("#nodes tr[data-node]")
        assert [nodes.nth(i).get_attribute("data-node") for i in range(nodes.count())] == [
            "alpha", "beta"
        ], "this node first"  # fmt: skip
        assert page.locator("#nodes tr[data-state=alive]").count() == 2
        assert "(this page)" in page.locator("#nodes tr[data-node=alpha]").inner_text()
        assert "(this page)" not in page.locator("#nodes tr[data-node=beta]").inner_text()

        # Threads: alpha's own threads as ever, then beta's from the store, with its work.
        page.goto(base + "/threads")
        assert page.locator("#node-alpha").count() == 1
        assert page.locator("#threads tr[data-thread$='/node']").count() == 1
        beta_section = page.locator("section#node-beta")
        assert beta_section.get_attribute("data-state") == "alive"
        shown = beta_section.locator("tr[data-thread] a")
        ids = {shown.nth(i).inner_text() for i in range(shown.count())}
        assert ids and ids <= held | busy_ids(alpha, "beta"), (ids, held)
        # Its threads' % CPU, between its heart-beats, once the sampler saw two of them.
        page.wait_for_selector("section#node-beta svg.spark polyline", timeout=20_000)

        assert beta.proc is not None
        os.kill(beta.proc.pid, signal.SIGKILL)
        beta.proc.wait(10)
        killed = time.monotonic()
        # The page left open follows: beta dead within node_timeout + 5 s and one refresh.
        page.wait_for_selector("section#node-beta[data-state=dead]",
                               timeout=(TIMEOUT + 5 + REFRESH) * 1000)  # fmt: skip
        took = time.monotonic() - killed
        assert beta_section.locator(".dead-note").count() == 1
        released = beta_section.locator("tr.released a")
        assert {released.nth(i).inner_text() for i in range(released.count())} == ids
        assert beta_section.locator(".released-mark").count() == len(ids)
        assert page.locator("#node-alpha .node-alive").count() == 1, "alpha still alive"
        beta_section.evaluate("e => e.scrollIntoView({block: 'end'})")
        shot = screenshot(page, results, "nodes")
        print(f"beta shown dead {took:.1f}s after SIGKILL; screenshot {shot}")

        page.goto(base + "/")
        dead = page.locator("#nodes tr[data-node=beta][data-state=dead] td.node-dead")
        assert dead.count() == 1
        assert dead.evaluate("e => getComputedStyle(e).color") == RED, "dead stands out"
        assert page.locator("#nodes tr[data-node=alpha][data-state=alive]").count() == 1
        assert page.locator("#nodes tr[data-node=beta] .released-mark").count() == 1
        page.screenshot(path=str(results / "dashboard-nodes-overview.png"))

        # What beta held was released: alpha delivers it without waiting for the leases.
        wait_for(lambda: status(alpha)["queues"]["postoffice"]["length"] == 0, 60, 0.5,
                 "beta's released work delivered by alpha")  # fmt: skip
        assert alpha.stop() == 0
    finally:
        alpha.close()
        beta.close()
