"""Every TOML block of docs/recipes.md loads through the configuration loader, so a recipe
an administrator copies is never refused for a key the schema does not have."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from mailgate.config import parse_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
RECIPES = DOCS / "recipes.md"
BLOCK = re.compile(r"^```toml\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks() -> list[str]:
    return BLOCK.findall(RECIPES.read_text())


def test_the_recipes_have_toml_blocks() -> None:
    found = blocks()
    assert len(found) >= 6, found
    text = "\n".join(found)
    for kind in ('type = "lmtp"', "mx = true", 'type = "smtp"', "[smarthost]"):
        assert kind in text, kind


@pytest.mark.parametrize("block", blocks(), ids=lambda b: b.splitlines()[0])
def test_each_block_parses(block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Recipes name the users and groups of the machine they are for (vmail, mailapps):
    # they need not exist on the machine that runs the tests.
    monkeypatch.setattr("mailgate.config.schema.user_id", lambda name: 1000)
    monkeypatch.setattr("mailgate.config.schema.group_id", lambda name: 1000)
    config = parse_config(tomllib.loads(block))
    for _, connector in config.routes:
        assert connector in config.connectors


def test_the_connector_example_of_the_reference_parses() -> None:
    [example] = BLOCK.findall((DOCS / "configuration.md").read_text())
    config = parse_config(tomllib.loads(example))
    kinds = {name: t.kind for name, t in config.connector_tables.items()}
    assert kinds == {
        "postoffice": "postoffice", "corp": "smarthost", "internet": "mx", "dovecot": "lmtp"
    }  # fmt: skip
    assert config.connectors == ["postoffice", "corp", "internet", "dovecot"]
