"""`[postoffice] owner`, `group` and `mode` (postoffice/owner.py) on real files: what
`mailbox add` and delivery create is given to the configured user and group with the
configured mode, through descriptors; the default leaves everything as before; a name
that does not exist is a configuration error naming its key; a service that may not give
files away says so (event 6010) and defers."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.config.load import parse_config
from mailgate.connectors.postoffice import PostofficeConnector
from mailgate.errors import ConfigError
from mailgate.observe.events import EventLog
from mailgate.postoffice.owner import Ownership
from mailgate.postoffice.tree import Postoffice
from tests.integration.test_postoffice import ALICE, BODY, MAP, claim
from tests.support.dovecot import mail_user, reachable_dir

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")


def owners(root: Path) -> dict[str, tuple[str, str, str]]:
    """Every path below `root` -> (user, group, mode)."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        found[str(path.relative_to(root))] = (
            pwd.getpwuid(st.st_uid).pw_name,
            grp.getgrgid(st.st_gid).gr_name,
            oct(st.st_mode & 0o7777),
        )
    return found


def deliver(po: Postoffice, quota: int = 0) -> None:
    session = PostofficeConnector(po, MAP, EventLog(), hostname="mx.test", quota=quota).open()
    try:
        session.deliver_one(claim(), BODY)
        session.flush()
    finally:
        session.close()


@needs_root
@pytest.mark.parametrize(
    ("mode", "files", "dirs"), [("0600", "0o600", "0o700"), ("0660", "0o660", "0o770")]
)
def test_what_mailgate_creates_belongs_to_the_owner(
    tmp_path: Path, mode: str, files: str, dirs: str
) -> None:
    user = mail_user()
    po = Postoffice(tmp_path / "po", MAP, Ownership.of(user.name, user.group, mode))
    po.add(ALICE)
    deliver(po, quota=1 << 20)  # a quota: maildirsize is written too
    found = owners(po.root)
    assert found.pop("LOCAL/MAIN/ALICE/maildirsize") == (user.name, user.group, files)
    [message] = [p for p in found if p.startswith("LOCAL/MAIN/ALICE/new/")]
    assert found.pop(message) == (user.name, user.group, files)
    assert set(found) == {
        "LOCAL", "LOCAL/MAIN", "LOCAL/MAIN/outbox", "LOCAL/MAIN/ALICE",
        "LOCAL/MAIN/ALICE/tmp", "LOCAL/MAIN/ALICE/new", "LOCAL/MAIN/ALICE/cur",
    }  # fmt: skip
    assert set(found.values()) == {(user.name, user.group, dirs)}
    assert (po.root.stat().st_uid, po.root.stat().st_mode & 0o777) == (0, 0o755), "the root stays"


@needs_root
def test_existing_directories_are_left_as_they_are(tmp_path: Path) -> None:
    Postoffice(tmp_path / "po", MAP).add(ALICE)  # before owner was set
    user = mail_user()
    po = Postoffice(tmp_path / "po", MAP, Ownership.of(user.name, user.group))
    po.add(ALICE.__class__("LOCAL", "MAIN", "BOB"))
    found = owners(po.root)
    assert found["LOCAL/MAIN/ALICE"][0] == "root"
    assert found["LOCAL/MAIN"][0] == "root", "created earlier: not given away afterwards"
    assert found["LOCAL/MAIN/BOB"] == (user.name, user.group, "0o700")


def test_by_default_nothing_changes(tmp_path: Path) -> None:
    po = Postoffice(tmp_path / "po", MAP)
    po.add(ALICE)
    deliver(po)
    me = (pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name)
    for path, (user, group, mode) in owners(po.root).items():
        assert (user, group) == me, path
        assert mode == ("0o600" if "/new/" in path else "0o700"), path


def test_unknown_names_and_modes_are_configuration_errors_naming_the_key() -> None:
    for section, problem in [
        ({"owner": "no-such-user-here"}, "postoffice.owner: no user 'no-such-user-here'"),
        ({"group": "no-such-group-here"}, "postoffice.group: no group 'no-such-group-here'"),
        ({"mode": "0644"}, "postoffice.mode: Input should be '0600', '0640' or '0660'"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config({"postoffice": section})
        assert problem in str(caught.value)
    config = parse_config({"postoffice": {"owner": "root", "group": "root", "mode": "0640"}})
    ownership = Ownership.of(
        config.postoffice.owner, config.postoffice.group, config.postoffice.mode
    )
    assert (ownership.uid, ownership.gid, ownership.file_mode, ownership.dir_mode) == (
        0,
        0,
        0o640,
        0o750,
    )


SCRIPT = """
import os, sys
from pathlib import Path
from mailgate.connectors.postoffice import PostofficeConnector
from mailgate.errors import TemporaryFailure
from mailgate.observe.events import EventLog
from mailgate.postoffice.owner import Ownership
from mailgate.postoffice.tree import Postoffice
from tests.integration.test_postoffice import ALICE, BODY, MAP, claim
import logging

class Ids(logging.Handler):
    def __init__(self):
        super().__init__()
        self.ids = []

    def emit(self, record):
        self.ids.append(record.mailgate_event[0].id)

os.setgid(65534)
os.setgroups([])
os.setuid(65534)  # nobody: may not give files to root
po = Postoffice(Path(sys.argv[1]), MAP, Ownership.of("root", "root"))
events = EventLog()
seen = Ids()
events.add_sink(seen)
connector = PostofficeConnector(po, MAP, events, hostname="mx.test")
session = connector.open()
try:
    session.deliver_one(claim(), BODY)
except TemporaryFailure as exc:
    print("deferred:", exc.reply)
print("events:", seen.ids)
"""


@needs_root
def test_a_service_that_may_not_give_files_away_says_so_and_defers() -> None:
    with reachable_dir() as shared:  # nobody must reach it
        root = shared / "po"
        Postoffice(root, MAP).add(ALICE)
        for path in [root, *root.rglob("*")]:
            os.chown(path, 65534, 65534)
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(root)], capture_output=True, text=True,
            timeout=60, cwd=Path(__file__).parents[2],
        )  # fmt: skip
        leftovers = list((root / "LOCAL/MAIN/ALICE/tmp").iterdir())
    assert done.returncode == 0, done.stderr
    assert (
        "deferred: 451 4.3.0 mailbox MS:LOCAL/MAIN/ALICE unavailable: cannot give it to root:root"
        in done.stdout
    )
    assert "mailgate runs as uid 65534 without CAP_CHOWN" in done.stdout
    assert "events: [6010, 2376]" in done.stdout
    assert leftovers == [], "no half-made file left"
