"""The suite's outside tools: installed by `make test` (.ci/tools, from .ci/tools.txt), and
under CI=true a missing one fails its tests instead of skipping them.

Regression (issue "What outside tools and a day of administration found", point 11): on a
fresh machine the swaks tests were skipped, and where swaks was present without Perl's
Net::SSLeay, test_swaks_tls_and_auth failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import tools

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / ".ci" / "tools"


def run_pytest(tmp_path: Path, test: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one test file using the suite's conftest, with PATH stripped of every tool."""
    target = ROOT / "tests" / "unit" / f"_probe_{os.getpid()}_{tmp_path.name}.py"
    target.write_text(test)
    try:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(target)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
            env={**os.environ, "PATH": str(tmp_path), **env},
        )  # fmt: skip
    finally:
        target.unlink()


PROBE = "def test_probe(swaks: str) -> None:\n    assert swaks\n"
PROBE_TLS = "def test_probe(swaks_tls: str) -> None:\n    assert swaks_tls\n"


def test_swaks_missing_under_ci_is_a_failure_not_a_skip(tmp_path: Path) -> None:
    failed = run_pytest(tmp_path, PROBE, {"CI": "true"})
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout
    assert "apt-get install swaks" in failed.stdout
    skipped = run_pytest(tmp_path, PROBE, {"CI": ""})
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout


def test_swaks_tls_needs_net_ssleay_too(tmp_path: Path) -> None:
    """swaks alone (a stand-in, Perl out of reach) is not enough for swaks --tls."""
    fake = tmp_path / "swaks"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    failed = run_pytest(tmp_path, PROBE_TLS, {"CI": "true"})
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout
    assert "libnet-ssleay-perl" in failed.stdout
    assert run_pytest(tmp_path, PROBE, {"CI": "true"}).returncode == 0  # plain swaks is there


def test_missing_is_a_skip_outside_ci_and_a_failure_under_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tools, "listed", lambda: {"no-such-tool-for-mailgate": "nopkg"})
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install nopkg"):
        tools.require("no-such-tool-for-mailgate")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install nopkg"):
        tools.require("no-such-tool-for-mailgate")


def test_every_listed_tool_is_installed() -> None:
    """What .ci/tools was to install is there (under CI=true, a failure if not)."""
    for check in tools.listed():
        tools.require(check)


def fake_apt(tmp_path: Path, policy: Path, succeed: bool = True) -> Path:
    """An apt-get stand-in: records its arguments and what policy-rc.d said meanwhile."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(
        "#!/bin/sh\n"
        f'echo "$DEBIAN_FRONTEND $*" >> {tmp_path}/apt.log\n'
        f'{policy} start; echo "policy-rc.d exit $?" >> {tmp_path}/apt.log\n'
        f"exit {0 if succeed else 100}\n"
    )
    apt.chmod(0o755)
    return apt


def installer(
    tmp_path: Path, listing: str, apt: Path, policy: Path, ci: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tools.txt").write_text(listing)
    return subprocess.run(
        ["sh", str(INSTALLER)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "CI": ci, "MAILGATE_TOOLS_LIST": str(tmp_path / "tools.txt"),
             "MAILGATE_APT_GET": str(apt), "MAILGATE_POLICY_RC_D": str(policy)},
    )  # fmt: skip


def test_installer_installs_what_is_missing_with_services_held(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")  # the machine's own policy, to be restored
    policy.chmod(0o755)
    apt = fake_apt(tmp_path, policy)
    listing = (
        "# check  package\nsh  dash\nno-such-tool-for-mailgate  nopkg-a\nperl:No::Such  nopkg-b\n"
    )
    result = installer(tmp_path, listing, apt, policy, ci="")
    log = (tmp_path / "apt.log").read_text().splitlines()
    assert log[0] == "noninteractive update -qq", log
    assert log[2].startswith("noninteractive install -y --no-install-recommends -qq "), log
    assert log[2].split()[-2:] == ["nopkg-a", "nopkg-b"] and "dash" not in log[2], log
    assert log[1] == log[3] == "policy-rc.d exit 101", "no service may start meanwhile"
    assert policy.read_text() == "#!/bin/sh\nexit 0\n", "the original policy is restored"
    # The stand-in installed nothing: outside CI a warning, under CI=true a failure.
    assert result.returncode == 0 and "WARNING" in result.stderr, result.stderr
    (tmp_path / "apt.log").unlink()
    result = installer(tmp_path, listing, apt, policy, ci="true")
    assert result.returncode != 0 and "no-such-tool-for-mailgate" in result.stderr
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_installer_does_nothing_when_all_is_there(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"  # none: it must not be left behind either
    apt = fake_apt(tmp_path, policy)
    result = installer(tmp_path, "sh dash\n", apt, policy, ci="true")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "apt.log").exists() and not policy.exists()


def test_installer_without_a_policy_leaves_none(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    apt = fake_apt(tmp_path, policy, succeed=False)
    result = installer(tmp_path, "no-such-tool-for-mailgate nopkg\n", apt, policy, ci="true")
    assert result.returncode != 0
    assert "policy-rc.d exit 101" in (tmp_path / "apt.log").read_text()
    assert not policy.exists()


def test_make_test_runs_the_installer() -> None:
    dry = subprocess.run(["make", "-n", "test"], capture_output=True, text=True, cwd=ROOT)
    assert ".ci/tools" in dry.stdout, dry.stdout
