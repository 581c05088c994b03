"""[[connector]] tables and the routes naming them: each type's keys and defaults, and every
mistake reported against its key (issue 15 point 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailgate.config import parse_config
from mailgate.errors import ConfigError

CORP = {"name": "corp", "type": "smtp", "host": "relay.corp.example"}
NET = {"name": "internet", "type": "smtp", "mx": True}
DOVECOT = {"name": "dovecot", "type": "lmtp", "socket": "/run/dovecot/lmtp"}


def problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return dict(info.value.problems)


def routes(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"match": m, "connector": c} for m, c in pairs]


def test_named_connectors_are_built_in_order_with_the_defaults_of_their_type() -> None:
    config = parse_config(
        {
            "connector": [CORP, NET, DOVECOT],
            "route": routes(
                ("*@corp.example", "corp"),
                ("*@mail.example", "dovecot"),
                ("MS:*/*/*", "postoffice"),
                ("*", "internet"),
            ),
        }
    )
    assert config.connectors == ["postoffice", "corp", "internet", "dovecot"]
    tables = config.connector_tables
    corp, net, dovecot = tables["corp"], tables["internet"], tables["dovecot"]
    assert (corp.kind, corp.port_number, corp.starttls_mode, corp.verify_certificate) == (
        "smarthost", 25, "opportunistic", True
    )  # fmt: skip
    assert (net.kind, net.port_number, net.starttls_mode, net.verify_certificate) == (
        "mx", 25, "opportunistic", False
    )  # fmt: skip
    assert (dovecot.kind, dovecot.port_number, dovecot.starttls_mode) == ("lmtp", 24, "none")
    assert (corp.thread_count, corp.batch_size) == (2, 32)
    # Relaying off this host needs a client allowed to relay: SMTP connectors only.
    assert config.relay_connectors == ["corp", "internet"]


def test_a_connector_no_route_names_is_not_built() -> None:
    config = parse_config({"connector": [CORP]})
    assert config.connectors == ["postoffice"]


def test_the_smarthost_section_is_the_connector_named_smarthost() -> None:
    config = parse_config({"smarthost": {"host": "relay.test", "port": 2525, "threads": 3}})
    table = config.connector_tables["smarthost"]
    assert (table.type, table.host, table.port_number, table.thread_count) == (
        "smtp", "relay.test", 2525, 3
    )  # fmt: skip
    assert config.connectors == ["postoffice", "smarthost"]
    assert config.relay_connectors == ["smarthost"]


def test_a_postoffice_table_sets_its_threads_and_keeps_the_rest() -> None:
    config = parse_config(
        {
            "postoffice": {"threads": 2, "batch": 64},
            "connector": [{"name": "postoffice", "type": "postoffice", "threads": 4}],
        }
    )
    table = config.connector_tables["postoffice"]
    assert (table.thread_count, table.batch_size) == (4, 64)


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"route": routes(("*", "fax"))}, "route[0].connector", "no connector 'fax'"),
        (
            {"connector": [CORP], "route": routes(("MS:*/*/*", "postoffice"), ("*", "crop"))},
            "route[1].connector",
            "known: 'postoffice', 'corp'",
        ),
        ({"connector": [CORP, {**DOVECOT, "name": "corp"}]}, "connector[1].name", "already"),
        (
            {"smarthost": {"host": "a.test"}, "connector": [{**CORP, "name": "smarthost"}]},
            "connector[0].name",
            "[smarthost]",
        ),
        ({"connector": [{**CORP, "type": "fax"}]}, "connector[0].type", "'smtp'"),
        ({"connector": [{**CORP, "name": "Corp"}]}, "connector[0].name", "not a name"),
        ({"connector": [{**CORP, "socket": "/x"}]}, "connector[0].socket", "a smarthost"),
        ({"connector": [{**NET, "username": "u"}]}, "connector[0].username", "an MX"),
        ({"connector": [{**DOVECOT, "mx": True}]}, "connector[0].mx", "an lmtp"),
        ({"connector": [{"name": "x", "type": "smtp"}]}, "connector[0]", "mx = true"),
        ({"connector": [{**DOVECOT, "host": "h"}]}, "connector[0]", "not both"),
        ({"connector": [{**DOVECOT, "socket": "lmtp"}]}, "connector[0]", "absolute"),
        ({"connector": [{**CORP, "password": "p"}]}, "connector[0]", "username"),
        ({"connector": [{**CORP, "starttls": "maybe"}]}, "connector[0].starttls", "'none'"),
        ({"connector": [{**CORP, "port": 70000}]}, "connector[0].port", "65535"),
        ({"connector": [{"name": "po", "type": "postoffice"}]}, "connector[0].name", "one"),
        ({"connector": [{**CORP, "name": "postoffice"}]}, "connector[0].name", "one postoffice"),
        ({"connector": [{**CORP, "rate": -1}]}, "connector[0].rate", "greater than"),
        ({"dns": {"nameservers": ["ns.example"]}}, "dns", "not an IP address"),
    ],
)
def test_a_mistake_names_its_key(data: dict[str, Any], key: str, reason: str) -> None:
    found = problems(data)
    assert key in found, found
    assert reason in found[key], found


def test_every_route_problem_is_reported_at_once() -> None:
    found = problems({"route": routes(("*@a.test", "one"), ("*@b.test", "two"))})
    assert set(found) == {"route[0].connector", "route[1].connector"}


def test_an_inline_password_is_never_shown() -> None:
    config = parse_config({"connector": [{**CORP, "username": "u", "password": "s3cret"}]})
    assert "s3cret" not in repr(config)
    assert "s3cret" not in repr(config.connector_tables["corp"])


def test_check_config_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mailgate.toml"
    path.write_text(
        '[[connector]]\nname = "corp"\ntype = "smtp"\nhost = "relay.corp.example"\n\n'
        '[[route]]\nmatch = "*@corp.example"\nconnector = "corp"\n\n'
        '[[route]]\nmatch = "*"\nconnector = "internet"\n'
    )
    command = [sys.executable, "-m", "mailgate", "check-config", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "route[1].connector" in result.stderr and "'internet'" in result.stderr


def test_smtp_connectors_need_a_client_allowed_to_relay_lmtp_does_not(tmp_path: Path) -> None:
    from mailgate.service import wiring

    config = parse_config(
        {
            "service": {"data_dir": str(tmp_path)},
            "smtp": {"relay_networks": ["10.0.0.0/8"]},
            "connector": [CORP, DOVECOT, NET],
            "route": routes(
                ("*@corp.example", "corp"), ("*@mail.example", "dovecot"), ("*", "internet")
            ),
        }
    )
    addresses = wiring.address_map(config)
    policy = wiring.recipient_policy(
        config, wiring.postoffice(config, addresses), wiring.router(config, addresses)
    )
    outside, inside = "192.0.2.1", "10.1.2.3"
    assert policy.check("u@corp.example", outside).relay_denied
    assert policy.check("u@far.example", outside).relay_denied
    assert policy.check("u@corp.example", inside).accepted
    assert policy.check("u@far.example", outside, authenticated=True).accepted
    assert policy.check("u@mail.example", outside).connector == "dovecot"
    assert policy.check("u@mail.example", outside).accepted, "local delivery, as a mailbox"


def test_chunking_is_on_by_default_and_off_per_connector_and_for_the_smarthost() -> None:
    off = {**CORP, "chunking": False}
    config = parse_config(
        {
            "connector": [off, NET, DOVECOT],
            "smarthost": {"host": "relay.test", "chunking": False},
            "route": routes(("*@corp.example", "corp"), ("*@mail.example", "dovecot"),
                            ("*@relay.example", "smarthost"), ("*", "internet")),
        }
    )  # fmt: skip
    tables = config.connector_tables
    assert [tables[n].chunking for n in ("corp", "internet", "dovecot", "smarthost")] == [
        False, True, True, False
    ]  # fmt: skip
    assert problems({"connector": [{"name": "postoffice", "type": "postoffice",
                                    "chunking": False}]})  # fmt: skip


def test_linger_is_5ms_by_default_and_set_per_connector_postoffice_and_smarthost() -> None:
    config = parse_config(
        {
            "connector": [{**CORP, "linger": "0s"}, NET],
            "postoffice": {"linger": "20ms"},
            "smarthost": {"host": "relay.test", "linger": "2ms"},
            "route": routes(("*@corp.example", "corp"), ("*@relay.example", "smarthost"),
                            ("*", "internet")),
        }
    )  # fmt: skip
    tables = config.connector_tables
    assert [tables[n].linger_seconds for n in ("postoffice", "corp", "internet", "smarthost")] == [
        0.02, 0.0, 0.005, 0.002
    ]  # fmt: skip
    assert parse_config({}).connector_tables["postoffice"].linger_seconds == 0.005
    assert problems({"postoffice": {"linger": "soon"}})
    # A linger of minutes would hold every partial batch that long: refused, naming the key.
    assert "postoffice.linger" in problems({"postoffice": {"linger": "2s"}})
    assert "connector[0].linger" in problems({"connector": [{**CORP, "linger": "1m"}]})
