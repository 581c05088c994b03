"""docs/architecture.md cannot rot: every path it names exists, every page it links is in
docs/, the README links it, and no page of the repository points at files outside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
PATH = re.compile(r"(?<![\w/.])((?:src/mailgate|tests|bench|contrib)/[\w./-]*\w)")
LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")
OUTSIDE = ("../shared", "DESIGN.md", "STYLE.md")  # the design notes live outside it


def test_every_path_the_architecture_names_exists() -> None:
    named = sorted(set(PATH.findall(DOC.read_text())))
    assert len(named) > 40, "the page names where each stage lives"
    missing = [p for p in named if not (ROOT / p).exists()]
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_page_the_architecture_links_exists() -> None:
    links = LINK.findall(DOC.read_text())
    assert links, "it links the pages that say more"
    missing = [link for link in links if not (DOC.parent / link).is_file()]
    assert missing == []


def test_the_readme_links_the_architecture() -> None:
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text()


def test_no_page_points_outside_the_repository() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if any(outside in line for outside in OUTSIDE)
    ]
    assert found == [], "\n".join(found)
