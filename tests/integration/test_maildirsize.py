"""The Maildir++ `maildirsize` behind `[postoffice] quota` (Q256187), on real directories,
and read back by a real Dovecot: the figure it keeps, when it lists the mailbox (only when
it must), how it takes lines written by others, and that it follows no symlink."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.connectors.postoffice import PostofficeConnector
from mailgate.errors import TemporaryFailure
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.observe.metrics import POSTOFFICE_QUOTA_SCANS
from mailgate.postoffice.quota import COMPACT_AT, STALE
from mailgate.postoffice.tree import Postoffice
from tests.integration.test_postoffice import ALICE, BODY, MAP, claim

QUOTA = 10_000


@pytest.fixture
def po(tmp_path: Path) -> Postoffice:
    po = Postoffice(tmp_path / "postoffice", MAP)
    po.add(ALICE)
    return po


def box(po: Postoffice) -> Path:
    return po.root / "LOCAL" / "MAIN" / "ALICE"


def figure(po: Postoffice) -> tuple[str, int, int]:
    """(definition, bytes, count) as any Maildir++ reader would sum them."""
    first, *lines = (box(po) / "maildirsize").read_text().splitlines()
    return first, sum(int(x.split()[0]) for x in lines), sum(int(x.split()[1]) for x in lines)


class Delivering:
    def __init__(self, po: Postoffice, quota: int = QUOTA) -> None:
        self.counters = Counters()
        self.session = PostofficeConnector(
            po, MAP, EventLog(), hostname="mx.test", quota=quota, counters=self.counters
        ).open()
        self.rid = 0

    def deliver(self, body: bytes = BODY) -> None:
        self.rid += 1
        self.session.deliver_one(claim(rid=self.rid), body)
        self.session.flush()

    @property
    def scans(self) -> float:
        return float(self.counters.snapshot()["counters"].get(POSTOFFICE_QUOTA_SCANS.name, 0.0))


def sizes(po: Postoffice) -> int:
    return sum(p.stat().st_size for sub in ("new", "cur") for p in (box(po) / sub).iterdir())


def test_the_figure_is_built_once_then_kept_by_appending(po: Postoffice) -> None:
    (box(po) / "cur" / "1.M1.old,S=700:2,S").write_bytes(b"x" * 700)
    d = Delivering(po)
    for _ in range(5):
        d.deliver()
    assert d.scans == 1, "one listing, to build the file"
    assert figure(po) == (f"{QUOTA}S", sizes(po), 6)
    lines = (box(po) / "maildirsize").read_text().splitlines()
    assert len(lines) == 2 + 5, "one line per delivery, appended"


def test_a_long_file_is_folded_to_its_sum_without_listing(po: Postoffice) -> None:
    d = Delivering(po, quota=1 << 30)
    for _ in range(COMPACT_AT // 6 + 50):
        d.deliver()
    assert (box(po) / "maildirsize").stat().st_size <= COMPACT_AT + 32
    assert figure(po)[1:] == (sizes(po), d.rid)
    assert d.scans == 1


def test_over_quota_defers_and_a_stale_figure_is_recounted(po: Postoffice) -> None:
    d = Delivering(po)
    d.deliver(BODY + b"x" * QUOTA)
    with pytest.raises(TemporaryFailure, match=r"452 4\.2\.2"):
        d.deliver()
    # A reader (mutt, say) deletes the message without writing its line to maildirsize.
    for each in (box(po) / "new").iterdir():
        each.unlink()
    with pytest.raises(TemporaryFailure):
        d.deliver()  # within 15 minutes the figure is trusted: no listing per attempt
    assert d.scans == 1
    old = time.time() - STALE - 1
    os.utime(box(po) / "maildirsize", (old, old))
    d.deliver()  # the stale over-quota figure was recounted: room again
    assert d.scans == 2
    assert figure(po)[1:] == (sizes(po), 1)


def test_lines_written_by_others_count(po: Postoffice) -> None:
    d = Delivering(po)
    d.deliver(BODY + b"x" * QUOTA)
    with open(box(po) / "maildirsize", "a") as f:  # an IMAP server's expunge, say
        f.write(f"-{sizes(po)} -1\n")
    for each in (box(po) / "new").iterdir():
        each.unlink()
    d.deliver()
    assert d.scans == 1, "no listing: the other writer's line was enough"


def test_a_damaged_file_is_rebuilt_and_a_symlink_is_not_followed(
    po: Postoffice, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    (box(po) / "maildirsize").symlink_to(target)
    d = Delivering(po)
    d.deliver()
    assert target.read_text() == "precious\n", "written through a planted symlink"
    assert not (box(po) / "maildirsize").is_symlink()
    (box(po) / "maildirsize").write_text("garbage\nnot numbers\n")
    d.deliver()
    assert figure(po)[1:] == (sizes(po), 2)
    assert d.scans == 2


# --- read by Dovecot ---------------------------------------------------------------------
DOVECOT_CONF = """
base_dir = {run}
state_dir = {run}
log_path = {root}/dovecot.log
first_valid_uid = 1
mail_location = maildir:{box}:INDEX={root}/index
mail_plugins = quota
protocols = imap
default_internal_user = nobody
default_login_user = nobody
ssl = no
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage={quota_kib}K
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/home
}}
passdb {{
  driver = static
  args = nopassword
}}
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory Dovecot, working as nobody, can reach (pytest's own are owner-only)."""
    root = Path(tempfile.mkdtemp(prefix="mailgate-dovecot-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def share(root: Path) -> None:
    """Let nobody read and write everything below `root`: mailgate writes owner-only."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, 0o777 if path.is_dir() else 0o666)


@pytest.fixture
def dovecot(shared: Path) -> Iterator[tuple[Postoffice, list[str]]]:
    """A private Dovecot on a postoffice's ALICE mailbox: (the postoffice, doveadm)."""
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not os.path.exists(binary) or shutil.which("doveadm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dovecot is not installed")
        pytest.skip("dovecot is not installed")
    po = Postoffice(shared / "postoffice", MAP)
    po.add(ALICE)
    root = shared / "dovecot"
    (root / "home").mkdir(parents=True)
    conf = root / "dovecot.conf"
    conf.write_text(
        DOVECOT_CONF.format(run=root / "run", root=root, box=box(po), quota_kib=QUOTA // 1024)
    )
    share(shared)
    subprocess.run([binary, "-c", str(conf)], check=True, timeout=30)
    try:
        yield po, ["doveadm", "-c", str(conf)]
    finally:
        subprocess.run(["doveadm", "-c", str(conf), "stop"], timeout=30, capture_output=True)


def doveadm(po: Postoffice, command: list[str], *args: str) -> str:
    share(po.root)
    out = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def dovecot_quota(po: Postoffice, command: list[str]) -> dict[str, int]:
    values = {}
    for line in doveadm(po, command, "quota", "get", "-u", "alice").splitlines()[1:]:
        fields = line.split()
        values[fields[-4]] = int(fields[-3])  # ... Type Value Limit %
    return values


def test_dovecot_reads_the_figure_and_mailgate_reads_dovecots_lines(
    dovecot: tuple[Postoffice, list[str]],
) -> None:
    po, command = dovecot
    d = Delivering(po)
    for _ in range(3):
        d.deliver(BODY + b"y" * 1500)
    used = sizes(po)
    assert dovecot_quota(po, command) == {"STORAGE": -(-used // 1024), "MESSAGE": 3}
    # Dovecot expunges one: it writes its own (negative) line, which mailgate then sums.
    doveadm(po, command, "expunge", "-u", "alice", "mailbox", "INBOX", "uid", "1")
    assert figure(po)[1:] == (sizes(po), 2)
    d.deliver()
    assert figure(po)[1:] == (sizes(po), 3)
    assert d.scans == 1, "Dovecot's lines were taken as they are"
