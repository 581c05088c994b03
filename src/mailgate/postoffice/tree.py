"""The postoffice tree: `<root>/NET/PO/MAILBOX/{tmp,new,cur}`, one Maildir per mailbox,
and `<root>/NET/PO/outbox/`, where the postoffice's programs drop files to send (pickup).

Every path below the root is opened one component at a time relative to its
parent's file descriptor with O_NOFOLLOW, so a symlink planted anywhere in the
tree (a mailbox or an outbox pointing at /etc, say) is refused instead of
followed. Names reaching this module were validated by `address.validate_name`;
the outbox's lower-case name can never be a mailbox's. Directories are created
owner-only (0700) by default: whoever can write an outbox can send mail through mailgate.
`[postoffice] owner`, `group` and `mode` (postoffice/owner.py) give each directory this
module creates its owner and mode through its descriptor, opened O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailgate.errors import AddressError
from mailgate.postoffice.address import AddressMap, PostofficeAddress, validate_name
from mailgate.postoffice.owner import Ownership

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAILDIR_SUBDIRS = ("tmp", "new", "cur")
OUTBOX = "outbox"
TRASH = ".removed"


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    address: PostofficeAddress
    messages: int
    size: int


@dataclass(frozen=True, slots=True)
class OutboxInfo:
    """A postoffice's outbox: its path, and the files waiting in it (None: no outbox)."""

    net: str
    po: str
    path: Path
    waiting: int | None


def open_dir(name: str, parent_fd: int) -> int:
    """Open a directory below `parent_fd`, refusing symlinks (raises OSError)."""
    return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def fsync_dir(fd: int) -> None:
    os.fsync(fd)


class Postoffice:
    """Administers and opens mailboxes below one root directory."""

    def __init__(
        self, root: Path, address_map: AddressMap, ownership: Ownership | None = None
    ) -> None:
        self.root = root
        self.map = address_map
        self.ownership = ownership or Ownership()  # of what is created below the root

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:  # first use: create it (not on every call: it is hot)
            self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_mailbox(self, address: PostofficeAddress) -> Iterator[int]:
        """Yield a descriptor of the mailbox directory; OSError if missing or a symlink."""
        with self._root_fd() as fd:
            opened: list[int] = []
            try:
                current = fd
                for part in (address.net, address.po, address.mailbox):
                    current = open_dir(part, current)
                    opened.append(current)
                yield current
            finally:
                for each in reversed(opened):
                    os.close(each)

    def exists(self, address: PostofficeAddress) -> bool:
        """Whether the mailbox exists as a real Maildir (no symlink anywhere below the root).

        Asked at every RCPT, so one lstat per level rather than the descriptor walk of
        `open_mailbox` (14 system calls): each level is checked to be a directory, not a
        symlink, before the next is looked up through it. An answer, not a guarantee:
        delivery walks the tree safely again, and a mailbox that goes meanwhile defers or
        fails there."""
        path = str(self.root)
        try:
            for part in (address.net, address.po, address.mailbox):
                path = f"{path}/{part}"
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    return False
            return all(stat.S_ISDIR(os.lstat(f"{path}/{sub}").st_mode) for sub in MAILDIR_SUBDIRS)
        except OSError:
            return False

    def add(self, address: PostofficeAddress) -> bool:
        """Create the mailbox (and its network, postoffice and the postoffice's outbox);
        False if the mailbox already existed. OSError if any of it is not a real directory."""
        with self._root_fd() as fd:
            opened: list[int] = []
            created = False
            try:
                current = fd
                owned = self.ownership
                for part in (address.net, address.po, address.mailbox, *MAILDIR_SUBDIRS):
                    if part in MAILDIR_SUBDIRS:
                        created |= _mkdir(part, opened[-1], owned)
                        continue
                    if part == address.mailbox:  # `current` is the postoffice
                        _mkdir(OUTBOX, current, owned)
                        os.close(open_dir(OUTBOX, current))  # a symlink there is refused
                    created |= _mkdir(part, current, owned)
                    current = open_dir(part, current)
                    opened.append(current)
                for each in opened:
                    fsync_dir(each)
                fsync_dir(fd)
            finally:
                for each in reversed(opened):
                    os.close(each)
        return created

    def remove(self, address: PostofficeAddress, *, force: bool = False) -> int:
        """Remove a mailbox; refuse one holding mail unless `force`. Returns messages removed.

        The directory is first renamed into a trash folder (atomic), so a delivery
        racing with the removal never writes into a half-deleted tree.
        """
        info = self.info(address)
        if info.messages and not force:
            raise AddressError(
                f"{address} holds {info.messages} message(s); use --force to remove it anyway"
            )
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True, mode=0o700)
        target = trash / f"{address.net}-{address.po}-{address.mailbox}-{time.time_ns()}"
        with self._root_fd() as root_fd:
            net_fd = open_dir(address.net, root_fd)
            try:
                po_fd = open_dir(address.po, net_fd)
                try:
                    os.rename(address.mailbox, target, src_dir_fd=po_fd)
                    fsync_dir(po_fd)
                finally:
                    os.close(po_fd)
            finally:
                os.close(net_fd)
        shutil.rmtree(target)
        return info.messages

    def info(self, address: PostofficeAddress) -> MailboxInfo:
        """Count messages and bytes in new/ and cur/; AddressError if there is no such mailbox."""
        count = size = 0
        try:
            with self.open_mailbox(address) as fd:
                for sub in ("new", "cur"):
                    sub_fd = open_dir(sub, fd)
                    try:
                        for entry in os.scandir(sub_fd):
                            if entry.is_file(follow_symlinks=False):
                                count += 1
                                size += entry.stat(follow_symlinks=False).st_size
                    finally:
                        os.close(sub_fd)
        except OSError as exc:
            raise AddressError(f"{address}: no such mailbox ({exc.strerror})") from None
        return MailboxInfo(address, count, size)

    def outbox(self, net: str, po: str) -> OutboxInfo:
        """A postoffice's outbox and how many files wait in it (regular files whose name does
        not start with '.', as pickup takes them); `waiting` is None if there is none."""
        path = self.root / net / po / OUTBOX
        try:
            with self._root_fd() as fd:
                opened: list[int] = []
                try:
                    current = fd
                    for part in (net, po, OUTBOX):
                        current = open_dir(part, current)
                        opened.append(current)
                    with os.scandir(current) as entries:
                        waiting = sum(
                            1
                            for e in entries
                            if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
                        )
                finally:
                    for each in reversed(opened):
                        os.close(each)
        except OSError:
            return OutboxInfo(net, po, path, None)
        return OutboxInfo(net, po, path, waiting)

    def mailboxes(self) -> list[PostofficeAddress]:
        """Every mailbox in the tree, sorted; entries with invalid names are skipped."""
        found: list[PostofficeAddress] = []
        if not self.root.is_dir():
            return found
        limit = self.map.max_name_length
        for net in _subdirs(self.root):
            for po in _subdirs(net):
                for mbx in _subdirs(po):
                    try:
                        address = PostofficeAddress(
                            validate_name("network", net.name, limit),
                            validate_name("postoffice", po.name, limit),
                            validate_name("mailbox", mbx.name, limit),
                        )
                    except AddressError:
                        continue
                    if address.relpath.parts == (net.name, po.name, mbx.name):
                        found.append(address)
        return sorted(found)


def _mkdir(name: str, parent_fd: int, ownership: Ownership) -> bool:
    """Create a directory, with its configured owner and mode; False if it existed (it is
    left as it is)."""
    try:
        os.mkdir(name, mode=0o700, dir_fd=parent_fd)
    except FileExistsError:
        return False
    if not ownership.default:
        fd = open_dir(name, parent_fd)  # O_NOFOLLOW: never a symlink put in its place
        try:
            ownership.apply(fd, directory=True)
        finally:
            os.close(fd)
    return True


def _subdirs(path: Path) -> list[Path]:
    try:
        return [
            Path(entry.path)
            for entry in os.scandir(path)
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
        ]
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return []
        raise
