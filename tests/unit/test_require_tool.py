"""tests/support/require.py: a missing tool skips a test, except under CI=true where it fails."""

from __future__ import annotations

import pytest

from tests.support.require import require_tool


def test_a_present_tool_is_found() -> None:
    assert require_tool("sh", "dash").endswith("/sh")


def test_a_missing_tool_skips_naming_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install no-such-package"):
        require_tool("/nonexistent/tool", "no-such-package")


def test_a_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tool("no-such-tool-anywhere", "no-such-package")
