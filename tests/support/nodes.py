"""Nodes for the several-nodes tests: `mailgate run` processes on one PostgreSQL schema.

Each node has its own root (data directory, SMTP port, control socket) and a name; all
share one schema of the test's own (tests/support/stores.py: pg_schema) and, if given,
one postoffice root. `node_config` writes what differs per node into the default
configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.process import DEFAULT_CONFIG, Mailgate


def node_config(
    name: str, url: str, *, node_timeout: str = "3s", postoffice: Path | None = None,
    extra: str = "",
) -> str:  # fmt: skip
    """Each node its own name and host name (Maildir names must not depend on it)."""
    config = DEFAULT_CONFIG.replace(
        'hostname = "mx.test"\n', f'hostname = "{name}.mx.test"\nnode = "{name}"\n', 1
    )
    if postoffice is not None:
        config = config.replace("[postoffice]\n", f'[postoffice]\nroot = "{postoffice}"\n', 1)
    return config + f'\n[queue]\nurl = "{url}"\nnode_timeout = "{node_timeout}"\n' + extra


def make_node(root: Path, name: str, url: str, **kwargs: Any) -> Mailgate:
    root.mkdir(parents=True, exist_ok=True)
    return Mailgate(root, config=node_config(name, url, **kwargs))


def status(mg: Mailgate) -> dict[str, Any]:
    result = mg.cli("ctl", "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def node_states(mg: Mailgate) -> dict[str, str]:
    """Each node's state as `mg` shows it in `ctl status`."""
    return {n["name"]: n["state"] for n in status(mg)["nodes"]}
