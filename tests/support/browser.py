"""Headless Chromium for the dashboard tests, driven by Playwright for Python.

The browser is Debian's `chromium` (.ci/tools.txt; `.ci/tools` installs it), never one
Playwright downloads: `launch(executable_path=CHROMIUM)`. `screenshot` saves a page under
the results directory (MAILGATE_TEST_RESULTS, else a pytest temporary directory) and,
with MAILGATE_DOCS_SCREENSHOTS=1, also as docs/img/dashboard-NAME.png for the README.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.tools import require

CHROMIUM = "/usr/bin/chromium"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
VIEWPORT = {"width": 1100, "height": 760}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = require(CHROMIUM)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("MAILGATE_TEST_RESULTS")
    where = Path(given) if given else tmp_path_factory.mktemp("dashboard-results")
    where.mkdir(parents=True, exist_ok=True)
    return where


def screenshot(page: Page, results: Path, name: str) -> Path:
    path = results / f"dashboard-{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("MAILGATE_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / f"dashboard-{name}.png"))
    return path
