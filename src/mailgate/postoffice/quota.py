"""A mailbox's size for `[postoffice] quota`: the Maildir++ `maildirsize` file, kept running.

`<mailbox>/maildirsize` is the file Dovecot's and Courier's Maildir++ quota read and
write: a first line with the limit (`1073741824S`), then `<bytes> <count>` lines, one
per change, each appended with a single write(); the usage is their sum. A delivery
reads the file (a few hundred bytes) and appends its line, so its cost does not grow
with the number of messages in the mailbox (Q256187: a full listing per delivery did).
The mailbox is listed (new/ and cur/ of the inbox and of its folders except .Trash,
sizes from each name's `,S=`) only to build a missing or unreadable file and, as the
specification asks, when the sum says "over quota" but the file is 15 minutes old (a
reader may have deleted mail without writing its line). Past 5120 bytes the file is
rewritten to its sum, without a listing. Rewrites go through tmp/ and rename(), so a
reader never sees half a file; a line appended by another writer meanwhile may be lost,
which the specification accepts (the figure is advisory; the next rebuild corrects it).
Files are opened relative to the mailbox's descriptor with O_NOFOLLOW; a rewritten file
gets the postoffice's owner and mode (postoffice/owner.py) through its descriptor.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.postoffice.owner import Ownership
from mailgate.postoffice.tree import open_dir

NAME = "maildirsize"
STALE = 15 * 60  # an over-quota figure older than this is recounted
COMPACT_AT = 5120  # bytes of file past which it is rewritten to one line
_MAX_READ = 1 << 20
_OPEN = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_SIZE = re.compile(r",S=(\d+)")


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    count: int


class MaildirSize:
    """One delivery's view of a mailbox's maildirsize: `usage()`, then `add()`, `close()`."""

    def __init__(
        self,
        box: int,
        tmp: int,
        limit: int,
        suffix: str,
        on_scan: Callable[[], None],
        ownership: Ownership | None = None,
    ) -> None:
        """`box` and `tmp` are descriptors of the mailbox and its tmp/; `suffix` makes the
        temporary name unique to the thread; `on_scan` counts listings (a metric);
        `ownership` is the owner and mode a rewritten file gets."""
        self._box, self._tmp, self._limit = box, tmp, limit
        self._suffix, self._on_scan = suffix, on_scan
        self._ownership = ownership or Ownership()
        self._fd: int | None = None
        self._definition = f"{limit}S"
        self._length = 0
        self._usage = Usage(0, 0)

    def usage(self) -> Usage:
        """The mailbox's size, rebuilding the file if it is missing, damaged, or stale
        while over the limit. OSError if the mailbox itself cannot be read."""
        if not self._read() or (self._usage.bytes >= self._limit and self._age() > STALE):
            self._rebuild()
        return self._usage

    def add(self, size: int) -> None:
        """Record one message of `size` bytes (after it was linked into new/)."""
        line = f"{size} 1\n".encode()
        if self._fd is None:
            return
        try:
            os.write(self._fd, line)  # O_APPEND, one write: never interleaved with another
        except OSError:
            return  # the figure is advisory: the next rebuild corrects it
        self._length += len(line)
        self._usage = Usage(self._usage.bytes + size, self._usage.count + 1)
        if self._length > COMPACT_AT:
            with contextlib.suppress(OSError):
                self._replace(self._definition, self._usage)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- reading and writing -------------------------------------------------------------------
    def _read(self) -> bool:
        """Open and sum the file; False if it is missing or does not parse."""
        try:
            self._fd = os.open(NAME, _OPEN, 0o600, dir_fd=self._box)
        except FileNotFoundError:
            return False
        except OSError:  # a symlink (ELOOP) or worse: rebuilt, the rename replaces it
            return False
        data = b""
        while len(data) < _MAX_READ:
            chunk = os.pread(self._fd, 65536, len(data))
            if not chunk:
                break
            data += chunk
        parsed = _parse(data)
        if parsed is None:
            return False
        self._definition, self._usage = parsed
        self._length = len(data)
        return True

    def _age(self) -> float:
        assert self._fd is not None
        return time.time() - os.fstat(self._fd).st_mtime

    def _rebuild(self) -> None:
        self._on_scan()
        self._usage = scan(self._box)
        self._replace(self._definition, self._usage)

    def _replace(self, definition: str, usage: Usage) -> None:
        """Write `definition` and `usage` as the whole file, atomically, and reopen it."""
        content = f"{definition}\n{usage.bytes} {usage.count}\n".encode()
        name = f"{NAME}.{self._suffix}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=self._tmp)
        try:
            self._ownership.apply(fd)
            os.write(fd, content)
        finally:
            os.close(fd)
        os.rename(name, NAME, src_dir_fd=self._tmp, dst_dir_fd=self._box)
        self.close()
        self._fd = os.open(NAME, _OPEN, 0o600, dir_fd=self._box)
        self._length = len(content)


def _parse(data: bytes) -> tuple[str, Usage] | None:
    """(definition, summed usage) of a maildirsize file's bytes, or None if malformed."""
    if not data.endswith(b"\n"):
        return None
    first, *lines = data[:-1].split(b"\n")
    definition = first.decode("ascii", "replace").strip()
    if not re.fullmatch(r"\d+[SC](,\d+[SC])*", definition):
        return None
    total = count = 0
    for line in lines:
        fields = line.split()
        if len(fields) != 2:
            return None
        try:
            total, count = total + int(fields[0]), count + int(fields[1])
        except ValueError:
            return None
    return definition, Usage(max(0, total), max(0, count))


def scan(box: int) -> Usage:
    """List the mailbox: new/ and cur/ of the inbox and of each folder but .Trash."""
    total = count = 0
    folders: list[str | None] = [None]  # None: the inbox itself
    with os.scandir(box) as entries:
        folders += [
            e.name
            for e in entries
            if e.name.startswith(".")
            and e.name not in (".", "..", ".Trash")
            and e.is_dir(follow_symlinks=False)
        ]
    for folder in folders:
        folder_fd = box if folder is None else _opened(folder, box)
        if folder_fd is None:
            continue
        try:
            for sub in ("new", "cur"):
                sub_fd = _opened(sub, folder_fd)
                if sub_fd is None:
                    continue
                try:
                    used, n = _sizes(sub_fd)
                finally:
                    os.close(sub_fd)
                total, count = total + used, count + n
        finally:
            if folder_fd != box:
                os.close(folder_fd)
    return Usage(total, count)


def _opened(name: str, parent: int) -> int | None:
    try:
        return open_dir(name, parent)
    except OSError:
        return None


def _sizes(dir_fd: int) -> tuple[int, int]:
    total = count = 0
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            found = _SIZE.search(entry.name.partition(":")[0])  # before the flags
            if found is not None:
                total += int(found.group(1))
            else:
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
            count += 1
    return total, count
