"""The postoffice tree and Maildir delivery on real directories: safety, idempotence, errors."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.connectors.postoffice import PostofficeConnector
from mailgate.errors import AddressError, PermanentFailure, TemporaryFailure
from mailgate.model import Claim, Disposition
from mailgate.observe.events import EventLog
from mailgate.postoffice.address import AddressMap, PostofficeAddress
from mailgate.postoffice.tree import Postoffice
from tests.support.fs import fill, small_filesystem

MAP = AddressMap("example.test", "{mailbox}@{po}.{net}.{domain}", 10)
ALICE = PostofficeAddress("LOCAL", "MAIN", "ALICE")
BODY = b"Subject: hi\r\n\r\nhello\r\n"


def claim(address: str = "alice@main.local.example.test", rid: int = 1, **kw: object) -> Claim:
    values: dict[str, object] = {
        "recipient_id": rid, "queue_id": "Q1", "address": address, "connector": "postoffice",
        "sender": "s@example.org", "received_at": 1_700_000_000.0, "attempts": 1,
        "internal_failures": 0, "redelivery": False, "smtputf8": False,
    }  # fmt: skip
    values.update(kw)
    return Claim(**values)  # type: ignore[arg-type]


@pytest.fixture
def po(tmp_path: Path) -> Postoffice:
    po = Postoffice(tmp_path / "postoffice", MAP)
    po.add(ALICE)
    return po


def connector(po: Postoffice, quota: int = 0) -> PostofficeConnector:
    return PostofficeConnector(po, MAP, EventLog(), hostname="mx.test", quota=quota)


def files(po: Postoffice, sub: str = "new") -> list[str]:
    return sorted(os.listdir(po.root / "LOCAL" / "MAIN" / "ALICE" / sub))


def test_add_list_remove(po: Postoffice) -> None:
    assert po.add(ALICE) is False, "adding twice is harmless"
    po.add(PostofficeAddress("LOCAL", "MAIN", "BOB"))
    assert po.mailboxes() == [ALICE, PostofficeAddress("LOCAL", "MAIN", "BOB")]
    for sub in ("tmp", "new", "cur"):
        assert (po.root / "LOCAL/MAIN/ALICE" / sub).is_dir()
    session = connector(po).open()
    session.deliver_one(claim(), BODY)
    session.flush()
    with pytest.raises(AddressError, match=r"--force"):
        po.remove(ALICE)
    assert po.remove(ALICE, force=True) == 1
    assert not po.exists(ALICE)
    assert po.mailboxes() == [PostofficeAddress("LOCAL", "MAIN", "BOB")]


def test_delivery_writes_one_maildir_file(po: Postoffice) -> None:
    session = connector(po).open()
    reply = session.deliver_one(claim(), BODY)
    session.flush()
    assert reply.startswith("250")
    assert files(po, "tmp") == []
    [name] = files(po)
    assert name.startswith("1700000000.MQ1R1.mx.test,S=")
    content = (po.root / "LOCAL/MAIN/ALICE/new" / name).read_bytes()
    assert content.startswith(b"Return-Path: <s@example.org>\nDelivered-To: alice@")
    assert b"\r\n" not in content and content.endswith(b"hello\n")
    assert int(name.split("S=")[1]) == len(content)


def test_second_delivery_of_the_same_recipient_does_not_duplicate(po: Postoffice) -> None:
    session = connector(po).open()
    session.deliver_one(claim(), BODY)
    session.deliver_one(claim(), BODY)  # e.g. a thread whose lease expired
    session.deliver_one(claim(redelivery=True), BODY)
    session.flush()
    assert len(files(po)) == 1
    session.deliver_one(claim(rid=2), BODY)  # another recipient row is another message
    session.flush()
    assert len(files(po)) == 2


def test_redelivery_finds_a_copy_the_reader_moved_to_cur(po: Postoffice) -> None:
    session = connector(po).open()
    session.deliver_one(claim(), BODY)
    session.flush()
    [name] = files(po)
    box = po.root / "LOCAL/MAIN/ALICE"
    os.rename(box / "new" / name, box / "cur" / f"{name}:2,S")
    reply = session.deliver_one(claim(redelivery=True), BODY)
    session.flush()
    assert "already" in reply
    assert files(po) == [] and len(files(po, "cur")) == 1


def test_missing_mailbox_is_permanent(po: Postoffice) -> None:
    session = connector(po).open()
    with pytest.raises(PermanentFailure, match=r"550 5\.1\.1"):
        session.deliver_one(claim("carol@main.local.example.test"), BODY)
    with pytest.raises(PermanentFailure):
        session.deliver_one(claim("someone@example.org"), BODY)


def test_symlinks_are_refused_not_followed(po: Postoffice, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "new").mkdir(parents=True)
    (outside / "tmp").mkdir()
    (outside / "cur").mkdir()
    (po.root / "LOCAL" / "MAIN" / "EVIL").symlink_to(outside)
    evil = PostofficeAddress("LOCAL", "MAIN", "EVIL")
    assert not po.exists(evil)
    session = connector(po).open()
    with pytest.raises(PermanentFailure):
        session.deliver_one(claim("evil@main.local.example.test"), BODY)
    assert list((outside / "new").iterdir()) == []
    (po.root / "LINKNET").symlink_to(po.root / "LOCAL")
    assert not po.exists(PostofficeAddress("LINKNET", "MAIN", "ALICE"))
    with pytest.raises(OSError):
        po.add(PostofficeAddress("LINKNET", "MAIN", "NEW"))
    assert not (po.root / "LOCAL" / "MAIN" / "NEW").exists()


def test_a_thread_that_keeps_a_mailbox_open_notices_it_removed_replaced_or_swapped(
    po: Postoffice, tmp_path: Path
) -> None:
    """Delivery threads keep mailboxes open between deliveries; nothing may land in a removed
    mailbox (the trash), in a stale directory, or through a symlink put in its place."""
    session = connector(po).open()
    session.deliver_one(claim(rid=1), BODY)
    session.flush()
    po.remove(ALICE, force=True)  # renamed into the trash, then deleted
    with pytest.raises(PermanentFailure, match=r"550 5\.1\.1"):
        session.deliver_one(claim(rid=2), BODY)
    po.add(ALICE)  # a new directory under the same name
    session.deliver_one(claim(rid=3), BODY)
    session.flush()
    assert [n.split(".")[1] for n in files(po)] == ["MQ1R3"]
    box = po.root / "LOCAL" / "MAIN" / "ALICE"
    os.rename(box / "tmp", box / "tmp.old")  # a Maildir subdirectory recreated by hand
    (box / "tmp").mkdir()
    session.deliver_one(claim(rid=4), BODY)
    session.flush()
    assert len(files(po)) == 2 and os.listdir(box / "tmp.old") == []
    outside = tmp_path / "outside"
    for sub in ("tmp", "new", "cur"):
        (outside / sub).mkdir(parents=True)
    os.rename(box, tmp_path / "moved")  # the open directory moves away; a symlink replaces it
    box.symlink_to(outside)
    with pytest.raises(PermanentFailure):
        session.deliver_one(claim(rid=5), BODY)
    session.flush()
    session.close()
    assert os.listdir(outside / "new") == [] and len(os.listdir(tmp_path / "moved/new")) == 2


def test_a_thread_keeps_a_bounded_number_of_mailboxes_open(po: Postoffice) -> None:
    names = [f"U{n}" for n in range(40)]
    for name in names:
        po.add(PostofficeAddress("LOCAL", "MAIN", name))
    # Counts of this process's descriptors: garbage an earlier test left (a pipe of a
    # subprocess it did not close, say) must not be collected half-way and close some.
    gc.collect()
    gc.disable()
    try:
        before = len(os.listdir("/proc/self/fd"))
        session = connector(po).open()
        for rid, name in enumerate(names * 2, start=1):
            session.deliver_one(claim(f"{name.lower()}@main.local.example.test", rid=rid), BODY)
            session.flush()
            held = len(os.listdir("/proc/self/fd")) - before
            assert held <= 3 * type(session).KEEP_OPEN, f"{held} descriptors open"
        session.close()
        assert len(os.listdir("/proc/self/fd")) == before, "close releases every descriptor"
    finally:
        gc.enable()
    box = po.root / "LOCAL" / "MAIN"
    assert all(len(os.listdir(box / name / "new")) == 2 for name in names)


def test_quota_defers_instead_of_bouncing(po: Postoffice) -> None:
    session = connector(po, quota=100).open()
    session.deliver_one(claim(), BODY + b"x" * 200)
    session.flush()
    with pytest.raises(TemporaryFailure, match=r"452 4\.2\.2"):
        session.deliver_one(claim(rid=2), BODY)


def test_full_disk_defers_instead_of_bouncing(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "1m") as small:
        po = Postoffice(small / "postoffice", MAP)
        po.add(ALICE)
        filler = fill(small)
        session = connector(po).open()
        with pytest.raises(TemporaryFailure, match=r"452 4\.2\.2"):
            session.deliver_one(claim(), BODY + b"x" * 100_000)
        assert files(po, "tmp") == [], "no partial file left behind"
        filler.unlink()
        session.deliver_one(claim(), BODY)
        session.flush()
        assert len(files(po)) == 1


def test_mailbox_cli_refuses_traversal(tmp_path: Path) -> None:
    def mailbox(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mailgate", "mailbox", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    # (An argv cannot carry NUL; the unit tests cover NUL in names.)
    for bad in ["MS:../../ETC/PASSWD", "MS:A/B/../../C", "MS:/tmp/x", "../x@b.a.host"]:
        result = mailbox("add", bad)
        assert result.returncode != 0, bad
    assert not (tmp_path / "postoffice").exists() or list((tmp_path / "postoffice").iterdir()) == []
    result = mailbox("add", "MS:N/P/USER")
    assert result.returncode == 0 and result.stdout.strip().startswith("user@p.n.")
    listed = mailbox("list")
    assert "MS:N/P/USER" in listed.stdout
    assert mailbox("remove", "MS:N/P/USER").returncode == 0
    assert mailbox("list").stdout == ""


def test_outbox_is_created_with_the_postoffice_and_a_symlink_there_is_refused(
    po: Postoffice, tmp_path: Path
) -> None:
    outbox = po.root / "LOCAL" / "MAIN" / "outbox"
    assert outbox.is_dir() and not outbox.is_symlink()
    assert po.outbox("LOCAL", "MAIN").waiting == 0
    (outbox / "one.eml").write_bytes(b"x")
    (outbox / ".work").mkdir()
    os.symlink("/etc/passwd", outbox / "link.eml")
    assert po.outbox("LOCAL", "MAIN").waiting == 1, "regular files only, as pickup takes them"
    assert po.outbox("LOCAL", "NOPE").waiting is None

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (po.root / "LOCAL" / "OTHER").mkdir()
    os.symlink(elsewhere, po.root / "LOCAL" / "OTHER" / "outbox")
    with pytest.raises(OSError):
        po.add(PostofficeAddress("LOCAL", "OTHER", "BOB"))
    assert list(elsewhere.iterdir()) == [] and not (po.root / "LOCAL" / "OTHER" / "BOB").exists()
    assert po.outbox("LOCAL", "OTHER").waiting is None, "a symlinked outbox is not followed"


def test_regression_a_cancelled_attempt_cancelled_the_messages_next_one_too(
    po: Postoffice,
) -> None:
    """`mailgate queue hold` cancels the attempt in progress; after `queue release` the
    same thread, on the same session, tries the message again. Its cancel was kept for the
    queue id and stopped that attempt as well: the message was deferred for the retry
    interval instead of delivered (tests/e2e/test_admin_command_takes_effect.py)."""
    session = connector(po).open()
    session.cancel("Q1")  # between the claim and the delivery
    [cancelled] = session.deliver([claim(rid=1)], BODY)
    assert cancelled.disposition is Disposition.DEFERRED, cancelled
    assert "cancelled by the administrator" in cancelled.reply
    [again] = session.deliver([claim(rid=1)], BODY)  # the next attempt, after a release
    assert again.disposition is Disposition.DELIVERED, again
    session.flush()
    session.cancel("Q2")  # skipped in its batch: never delivered there
    session.flush()
    [later] = session.deliver([claim(queue_id="Q2", rid=2)], BODY)
    assert later.disposition is Disposition.DELIVERED, later
    session.flush()
    assert len(files(po)) == 2
    session.close()
