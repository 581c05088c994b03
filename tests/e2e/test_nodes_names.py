"""Node names on one shared PostgreSQL queue: a second live node under a name is refused
(event 1040, exit 1), two named nodes see each other in `ctl status`, a clean stop shows
as `stopped` (never dead), and a node restarted on its data directory rejoins at once.
Single-process nodes, to keep the process count small on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodes import make_node, node_states, status
from tests.support.process import wait_for
from tests.support.stores import pg_schema


@pytest.fixture
def url() -> Iterator[str]:
    with pg_schema() as (_, schema_url):
        yield schema_url


def test_two_live_nodes_with_one_name_are_refused(tmp_path: Path, url: str) -> None:
    first = make_node(tmp_path / "one", "alpha", url)
    twin = make_node(tmp_path / "two", "alpha", url)
    other = make_node(tmp_path / "three", "beta", url)
    try:
        assert first.cli("db", "upgrade").returncode == 0
        first.start("--single-process")
        twin.start("--single-process", wait=False)
        assert twin.proc is not None and twin.proc.wait(30) == 1
        [refused] = twin.events(1040)
        assert refused["fields"]["node"] == "alpha"
        assert refused["fields"]["holder_data_dir"] == str((tmp_path / "one" / "var").resolve())
        assert "already alive" in refused["message"]

        other.start("--single-process")
        wait_for(lambda: node_states(first) == {"alpha": "alive", "beta": "alive"}, 15,
                 what="both nodes alive in alpha's status")  # fmt: skip
        beta = next(n for n in status(first)["nodes"] if n["name"] == "beta")
        assert beta["pid"] == other.proc.pid if other.proc else False
        assert any(t["thread"] == "node" for t in beta["work"]), "its threads are listed"
        assert "node beta ALIVE: host" in first.cli("ctl", "status").stdout
        frame = first.cli("top", "--once").stdout
        assert "nodes" in frame and "beta" in frame and "alive" in frame

        assert other.stop() == 0
        assert node_states(first)["beta"] == "stopped"
        assert not first.events(1042), "a clean stop is never a death"
        # Restarted on its own data directory: rejoins under its name at once.
        first.kill()
        first.start("--single-process")
        assert [e["fields"]["node"] for e in first.events(1041)] == ["alpha", "alpha"]
        assert first.stop() == 0
    finally:
        for mg in (first, twin, other):
            mg.close()
