"""Optional libraries are imported only where they are used: psycopg for a PostgreSQL
queue, dnspython for an MX connector, uvicorn and Starlette for the admin listener.

Every service start runs a master and three workers, and the suite runs hundreds of
CLI commands: each of the three cost 40 to 100 ms of every one of those processes
when it was imported at the top. Each check runs in a fresh interpreter, so what an
earlier test imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

OPTIONAL = ("psycopg", "dns", "uvicorn", "starlette")

# What a process imports before it does anything: the worker entry, the master, the
# `mailgate` command and the modules of its commands that read the queue.
ENTRIES = (
    "mailgate.master.worker",
    "mailgate.master.run",
    "mailgate.cli.main",
    "mailgate.cli.queue",
    "mailgate.cli.track",
    "mailgate.cli.db",
)

# Builds each kind of process from a configuration as run_worker and `mailgate run
# --single-process` do, and prepares (does not start) the interchange worker's parts: the
# queue opened, the connectors built; and the control part, which opens the admin listener.
BUILD = """
import sys
from mailgate.config import parse_config
from mailgate.config.load import read_toml
from mailgate.observe.events import EventLog
from mailgate.service.control import ControlPart
from mailgate.service.processes import WORKERS, single_process
config = parse_config(read_toml(sys.argv[1]), {"service.data_dir": sys.argv[2]})
WORKERS["receive"](config, EventLog(), None)
for part in WORKERS["interchange"](config, EventLog(), None).parts:
    part.prepare()
single_process(config, EventLog()).part(ControlPart).prepare()
"""

MX = """
[[connector]]
name = "internet"
type = "smtp"
mx = true

[[route]]
match = "*"
connector = "internet"
"""


def optional_loaded(script: str, *args: str) -> list[str]:
    """The optional libraries in sys.modules after `script` ran in a new interpreter."""
    report = "\nprint(__import__('json').dumps([m for m in %r if m in sys.modules]))\n"
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + script + report % (OPTIONAL,), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", ENTRIES)
def test_a_process_entry_imports_no_optional_library(module: str) -> None:
    assert optional_loaded(f"import {module}") == []


def test_processes_built_on_sqlite_without_mx_or_admin_import_none(tmp_path: Path) -> None:
    """The single process's control part binds its socket; the admin listener is off."""
    config = tmp_path / "mailgate.toml"
    config.write_text('[admin]\nlisten = ""\n')
    assert optional_loaded(BUILD, str(config), str(tmp_path / "var")) == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ('[admin]\nlisten = ""\n' + MX, ["dns"]),
        ('[admin]\nlisten = "127.0.0.1:0"\n', ["uvicorn", "starlette"]),
    ],
    ids=["mx-connector", "admin-listener"],
)
def test_what_is_configured_is_imported(tmp_path: Path, settings: str, expected: list[str]) -> None:
    """The check itself: a process that builds an MX connector imports dnspython, one
    that opens the admin listener uvicorn and Starlette, and nothing else."""
    config = tmp_path / "mailgate.toml"
    config.write_text(settings)
    assert optional_loaded(BUILD, str(config), str(tmp_path / "var")) == expected
