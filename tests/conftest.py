"""Shared fixtures: a real mailgate on loopback in a temporary data directory, and the
outside tools (listed in .ci/tools.txt; missing, they skip a test, or fail it under CI=true)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import Mailgate
from tests.support.tools import require

# queue_backend: every store test on both stores; browser and results: the dashboard's tests
pytest_plugins = ("tests.support.stores", "tests.support.browser")


@pytest.fixture
def mailgate(tmp_path: Path) -> Iterator[Mailgate]:
    """A started mailgate with mailboxes MS:NET1/PO1/ALICE and MS:NET1/PO1/BOB."""
    mg = Mailgate(tmp_path)
    mg.add_mailbox("MS:NET1/PO1/ALICE")
    mg.add_mailbox("MS:NET1/PO1/BOB")
    mg.start()
    try:
        yield mg
    finally:
        mg.close()


@pytest.fixture
def swaks() -> str:
    return require("swaks")


@pytest.fixture
def swaks_tls() -> str:
    """swaks able to speak TLS: `swaks --tls` needs Perl's Net::SSLeay besides swaks."""
    path = require("swaks")
    require("perl:Net::SSLeay")
    return path
