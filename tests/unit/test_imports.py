"""The import graph: no cycles (type-only imports included), and cheap CLI commands."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the mailgate package: dotted name -> (file, is a package)."""
    found = {}
    for path in (SRC / "mailgate").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the mailgate modules it imports: every `import` and `from ... import` in
    it, at the top, inside functions and under `if TYPE_CHECKING:` alike (a type-only
    cycle is still two modules that cannot be read, or split, one without the other)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, package) in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if package else name.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join([*here, *([node.module] if node.module else [])])
                for alias in node.names:  # `from pkg import module` imports the module
                    module = f"{base}.{alias.name}"
                    targets.add(module if module in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
                on_path.add(child)
    return None


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and any(graph.values()), "the graph was not built"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_type_only_cycle() -> None:
    """The check itself: a cycle closed by a TYPE_CHECKING import is reported."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_command_that_reads_the_event_log_imports_no_service() -> None:
    """`mailgate events` opens the event store and nothing else: the CLI must not import
    the service, the master or the receivers to get there."""
    script = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from mailgate.cli.main import cli\n"
        "result = CliRunner().invoke(cli, ['events', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "import mailgate.cli.events\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('mailgate'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    heavy = [
        m
        for m in loaded
        if m.split(".")[1:2] in (["service"], ["master"], ["receive"], ["interchange"])
    ]
    assert "mailgate.cli.events" in loaded
    assert not heavy, f"`mailgate events` imported {heavy}"
