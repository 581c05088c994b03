"""Configuration: defaults, validation with dotted paths, units, and the generated reference."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
from pydantic import BaseModel

from mailgate.config import load_config, parse_config
from mailgate.config.reference import render_reference
from mailgate.config.schema import Config
from mailgate.config.units import format_duration, parse_duration, parse_size
from mailgate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def problems(data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return dict(info.value.problems)


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config.smtp.listen == "127.0.0.1:2525"
    assert config.data_dir == Path("./var")
    assert config.queue_path == Path("./var/queue/queue.db")
    assert config.service.stop_timeout == 30.0
    assert config.smtp.max_message_size == 10 * 1024 * 1024
    assert config.smtp.max_line_length == 1024 * 1024
    assert config.postoffice_domain == config.service.hostname
    assert config.routes == [("MS:*/*/*", "postoffice")]
    assert config.connectors == ["postoffice"]


def test_smarthost_defaults_and_flag() -> None:
    config = parse_config({"smarthost": {"host": "relay.test"}})
    assert config.routes == [("MS:*/*/*", "postoffice"), ("*", "smarthost")]
    assert config.connectors == ["postoffice", "smarthost"]
    flagged = load_config(None, smarthost="127.0.0.1:2526")
    assert (flagged.smarthost.host, flagged.smarthost.port) == ("127.0.0.1", 2526)
    assert flagged.routes[-1] == ("*", "smarthost")
    with pytest.raises(ConfigError):
        load_config(None, smarthost="nowhere")


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"smtp": {"bogus": 1}}, "smtp.bogus", "unknown key"),
        ({"nosuch": {}}, "nosuch", "unknown key"),
        ({"smtp": {"max_recipients": "ten"}}, "smtp.max_recipients", "integer"),
        ({"smtp": {"max_recipients": 0}}, "smtp.max_recipients", "greater than or equal to 1"),
        ({"smtp": {"listen": "nowhere"}}, "smtp.listen", "HOST:PORT"),
        ({"smtp": {"relay_networks": ["10.0.0.0/33"]}}, "smtp.relay_networks", "CIDR"),
        ({"service": {"stop_timeout": "soon"}}, "service.stop_timeout", "not a duration"),
        ({"smtp": {"max_message_size": "big"}}, "smtp.max_message_size", "not a size"),
        ({"smtp": {"max_line_length": 500}}, "smtp.max_line_length", "greater than or equal"),
        ({"queue": {"retry_min": "2h", "retry_max": "1h"}}, "queue", "retry_min"),
        (
            {"route": [{"match": "*@x.org", "connector": "fax"}]},
            "route[0].connector",
            "'smarthost'",
        ),
        (
            {"route": [{"match": "*", "connector": "smarthost"}]},
            "route[0].connector",
            "host is empty",
        ),
        ({"smarthost": {"starttls": "maybe"}}, "smarthost.starttls", "'none'"),
        ({"route": [{"match": "a*b@x.org", "connector": "postoffice"}]}, "route[0].match", "*"),
        ({"log": {"levels": {"Bogus": "maximum"}}}, "log.levels.Bogus", "unknown key; it should"),
        ({"log": {"levels": {"Sent": "loud"}}}, "log.levels.Sent", "'none'"),
        ({"postoffice": {"address_template": "{mailbox}@{net}.x"}}, "postoffice", "{po}"),
    ],
)
def test_invalid_values_name_the_dotted_key(
    data: dict[str, object], path: str, reason: str
) -> None:
    found = problems(data)
    assert path in found, found
    assert reason in found[path], found


def test_overrides_are_validated_too() -> None:
    config = parse_config({}, {"smtp.listen": "127.0.0.1:2600", "service.data_dir": "/srv/mg"})
    assert config.smtp.listen == "127.0.0.1:2600"
    assert config.log_dir == Path("/srv/mg/log")
    with pytest.raises(ConfigError):
        parse_config({}, {"smtp.listen": "127.0.0.1:99999"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("2m", 120), ("1h30m", 5400), ("5d", 432000), ("500ms", 0.5), (7, 7)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5", "5x", "m5", "-1s", "1h 30", True, [1]])
def test_bad_durations(bad: object) -> None:
    """A string needs a unit; "5" alone is refused rather than guessed."""
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_sizes() -> None:
    assert parse_size("10MiB") == 10 * 1024 * 1024
    assert parse_size("512k") == 512_000
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError):
        parse_size("lots")
    assert format_duration(5400) == "90m"


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[smtp]\nlisten = "127.0.0.1:2600"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nmax_recipients = -1\n[queue]\nlease = "forever"\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("[smtp\n")

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mailgate", "check-config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert check(good).returncode == 0
    result = check(bad)
    assert result.returncode == 1
    assert "smtp.max_recipients" in result.stderr and "queue.lease" in result.stderr
    result = check(broken)
    assert result.returncode == 1 and "not valid TOML" in result.stderr
    assert check(tmp_path / "missing.toml").returncode == 1


def test_configuration_reference_is_in_sync() -> None:
    checked_in = (ROOT / "docs" / "configuration.md").read_text()
    assert checked_in == render_reference(), "run `mailgate docs --write`"


def _enumerations(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Every key whose schema type is a Literal (or holds one), with the allowed values; a
    table whose keys are enumerated too gets a second entry, KEY.<keys>."""
    found: dict[str, tuple[str, ...]] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        origin = get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= _enumerations(annotation, f"{prefix}{name}.")
        elif origin is list and issubclass(get_args(annotation)[0], BaseModel):
            found |= _enumerations(get_args(annotation)[0], f"{prefix}{name}.")
        elif origin is Literal:
            found[prefix + name] = get_args(annotation)
        elif origin is dict:
            keys, values = get_args(annotation)
            if get_origin(keys) is Literal:
                found[f"{prefix}{name}.<keys>"] = get_args(keys)
            if get_origin(values) is Literal:
                found[prefix + name] = get_args(values)
    return found


def _type_cell(reference: str, dotted: str) -> str:
    """The type column of key `dotted` (section.key) in the generated reference."""
    section, _, key = dotted.rpartition(".")
    lines = reference.splitlines()
    heading = next(
        i for i, line in enumerate(lines) if line in (f"## [{section}]", f"## [[{section}]]")
    )
    row = next(line for line in lines[heading:] if line.startswith(f"| `{key}` |"))
    return re.split(r"(?<!\\)\|", row)[2]


def test_enumerated_keys_document_exactly_the_schema_values() -> None:
    """Regression: smarthost.starttls was documented as "never, when offered, or always" with
    type `Literal` while the schema accepts none/opportunistic/required."""
    enumerations = _enumerations(Config)
    assert {"smarthost.starttls", "log.levels", "log.levels.<keys>", "connector.type"} <= set(
        enumerations
    ), enumerations
    assert enumerations["smarthost.starttls"] == ("none", "opportunistic", "required")
    reference = render_reference()
    for dotted, values in enumerations.items():
        keys = dotted.endswith(".<keys>")
        cell = _type_cell(reference, dotted.removesuffix(".<keys>"))
        # Values are TOML strings, written `"value"`; enumerated table keys are bare, `Key`.
        listed = re.findall(r"`([A-Za-z]\w*)`" if keys else r'`"([^"`]*)"`', cell)
        assert sorted(listed) == sorted(values), (dotted, cell)


def test_log_levels_take_exactly_the_event_catalogs_categories_and_levels() -> None:
    """[log] levels names the catalog's categories and levels (declared there, once)."""
    from mailgate.observe import catalog
    from mailgate.observe.events import levels_from_config

    levels = list(catalog.Level)
    every = {c.value: levels[n % len(levels)].name.lower() for n, c in enumerate(catalog.Category)}
    config = parse_config({"log": {"levels": every}})
    assert set(levels_from_config(config.log.levels)) == set(catalog.Category)
    for level in catalog.Level:
        parse_config({"log": {"levels": {"Sent": level.name.lower()}}})
    with pytest.raises(ConfigError):
        parse_config({"log": {"levels": {"Sent": "loud"}}})
