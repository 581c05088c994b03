"""The outside programs the suite uses (listed once, in .ci/tools.txt), found or reported.

`require(check)` returns the program's path, or, when it is missing, skips the test with
the package to install; under CI=true it fails instead: CI must run every test, and a
missing tool there is a broken set-up (.ci/tools installs them), never a reason to skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

TOOLS_FILE = Path(__file__).resolve().parents[2] / ".ci" / "tools.txt"
SBIN = ("/usr/sbin", "/sbin")


def listed() -> dict[str, str]:
    """check -> Debian package, from .ci/tools.txt."""
    tools = {}
    for line in TOOLS_FILE.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) == 2:
            tools[words[0]] = words[1]
    return tools


def missing(reason: str) -> NoReturn:
    """Skip, or fail under CI=true, where nothing the suite needs may be missing."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)


def find(check: str) -> str | None:
    """The path of `check`'s program (or the check itself for a Perl module), if present."""
    if check.startswith("perl:"):
        module = check.removeprefix("perl:")
        perl = shutil.which("perl")
        if perl is None:
            return None
        loads = subprocess.run([perl, f"-M{module}", "-e1"], capture_output=True, timeout=30)
        return check if loads.returncode == 0 else None
    if check.startswith("/"):
        return check if os.access(check, os.X_OK) else None
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(check, path=path)


def require(check: str) -> str:
    """`check`'s path; skips (fails under CI=true) naming the package when it is missing."""
    package = listed().get(check)
    if package is None:
        raise AssertionError(f"{check} is not listed in {TOOLS_FILE}: add it with its package")
    found = find(check)
    if found is None:
        missing(f"{check} is not installed (apt-get install {package}, or run .ci/tools)")
    return found
