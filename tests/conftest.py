"""Shared fixtures: a real mailgate on loopback in a temporary data directory."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import Mailgate


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
    path = shutil.which("swaks")
    if path is None:
        pytest.skip("swaks is not installed (apt-get install swaks)")
    return path
