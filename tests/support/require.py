"""Outside programs a test needs: found, or the test skips (fails under CI=true).

CI must run every test, so there a missing program is a broken set-up, never a reason
to skip. Minimal on purpose: `tests/support/tools.py` (another branch, reading
.ci/tools.txt) does the same with the package list; the two should become one.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

SBIN = ("/usr/sbin", "/sbin")


def unavailable(reason: str) -> NoReturn:
    """Skip with `reason`, or fail under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str) -> str:
    """The path of program `name` (a command, or an absolute path); else `unavailable`."""
    if name.startswith("/"):
        found = name if os.access(name, os.X_OK) else None
    else:
        found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))
    if found is None:
        unavailable(f"{name} is not installed (apt-get install {package})")
    return found
