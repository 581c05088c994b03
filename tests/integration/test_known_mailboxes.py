"""The RCPT check's kept yes (postoffice/known.py) on a real postoffice tree: a mailbox
found is not looked up again for a second, a mailbox made is accepted at once, one removed
is refused once its yes is a second old, and at most `size` answers are kept."""

from __future__ import annotations

from pathlib import Path

from mailgate.postoffice.address import AddressMap, PostofficeAddress
from mailgate.postoffice.known import KnownMailboxes
from mailgate.postoffice.tree import Postoffice

MAP = AddressMap("example.test", "{mailbox}@{po}.{net}.{domain}", 10)
ALICE = PostofficeAddress("LOCAL", "MAIN", "ALICE")
BOB = PostofficeAddress("LOCAL", "MAIN", "BOB")
CAROL = PostofficeAddress("LOCAL", "MAIN", "CAROL")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counted:
    """The real `Postoffice.exists`, counting its calls."""

    def __init__(self, po: Postoffice) -> None:
        self.po = po
        self.calls: list[PostofficeAddress] = []

    def __call__(self, address: PostofficeAddress) -> bool:
        self.calls.append(address)
        return self.po.exists(address)


def test_a_yes_is_kept_for_the_ttl_and_a_removed_mailbox_is_refused_after_it(
    tmp_path: Path,
) -> None:
    po = Postoffice(tmp_path / "postoffice", MAP)
    po.add(ALICE)
    exists, clock = Counted(po), Clock()
    known = KnownMailboxes(exists, ttl=1.0, clock=clock)
    assert known(ALICE) and known(ALICE)
    assert exists.calls == [ALICE]  # the second answer was the kept one
    po.remove(ALICE, force=True)
    clock.now += 0.5
    assert known(ALICE)  # within the second: still the kept yes
    clock.now += 0.6
    assert not known(ALICE)
    assert exists.calls == [ALICE, ALICE]


def test_a_no_is_never_kept_so_a_mailbox_made_takes_mail_at_once(tmp_path: Path) -> None:
    po = Postoffice(tmp_path / "postoffice", MAP)
    exists, clock = Counted(po), Clock()
    known = KnownMailboxes(exists, clock=clock)
    assert not known(BOB)
    po.add(BOB)
    assert known(BOB)
    assert exists.calls == [BOB, BOB]


def test_at_most_size_answers_are_kept_the_oldest_found_going_first(tmp_path: Path) -> None:
    po = Postoffice(tmp_path / "postoffice", MAP)
    for address in (ALICE, BOB, CAROL):
        po.add(address)
    exists, clock = Counted(po), Clock()
    known = KnownMailboxes(exists, size=2, clock=clock)
    assert known(ALICE) and known(BOB) and known(CAROL)  # ALICE's yes goes
    exists.calls.clear()
    assert known(BOB) and known(CAROL)
    assert exists.calls == []
    assert known(ALICE)
    assert exists.calls == [ALICE]
