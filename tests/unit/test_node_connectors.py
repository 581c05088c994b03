"""`[service] connectors`: the connectors a node runs, checked in one place (wiring)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.config.load import parse_config
from mailgate.errors import ConfigError
from mailgate.service import wiring
from mailgate.service.connectors import node_connectors

SMARTHOST = {"smarthost": {"host": "relay.example.org"}}


def test_every_connector_by_default() -> None:
    assert node_connectors(parse_config(SMARTHOST)) == ["postoffice", "smarthost"]


def test_a_node_without_the_postoffice_runs_the_others_and_accepts_for_mailboxes(
    tmp_path: Path,
) -> None:
    config = parse_config({**SMARTHOST, "service": {"connectors": ["smarthost"],
                                                    "data_dir": str(tmp_path)}})  # fmt: skip
    assert node_connectors(config) == ["smarthost"]
    office = wiring.postoffice(config)
    policy = wiring.recipient_policy(config, office, wiring.router(config, office.map))
    verdict = policy.check("nobody@po1.net1." + config.postoffice_domain)
    assert verdict.accepted and verdict.connector == "postoffice", "queued for the nodes with it"


def test_an_unknown_connector_is_named_with_those_there_are() -> None:
    config = parse_config({"service": {"connectors": ["postoffice", "lmtp-dovecot"]}})
    with pytest.raises(ConfigError, match=r"lmtp-dovecot: no such connector.*\(postoffice\)"):
        node_connectors(config)


def test_the_postoffice_root_is_configurable(tmp_path: Path) -> None:
    config = parse_config({"service": {"data_dir": str(tmp_path / "var")},
                           "postoffice": {"root": str(tmp_path / "shared")}})  # fmt: skip
    assert config.postoffice_root == tmp_path / "shared"
    assert parse_config({"service": {"data_dir": "/x"}}).postoffice_root == Path("/x/postoffice")
