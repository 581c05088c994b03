"""connectors.postoffice: deliver into postoffice Maildirs, crash-safe and without duplicates.

A message for recipient R of queue id Q gets the fixed Maildir name
`<received>.M<Q>R<rid>.<host>,S=<size>`. Delivery writes `tmp/<name>.<thread>`,
fsyncs it, then link()s it to `new/<name>`: link fails with EEXIST rather than
overwrite, so a second delivery of the same recipient (after a crash, or by a
thread whose lease expired) can never make a second copy. Before recording an
outcome the thread fsyncs every `new/` it touched (`flush`). When the queue says
an earlier attempt may have succeeded (`redelivery`), `cur/` is searched too, in
case the reader already moved the message.

Errors: no mailbox (or a symlink where a directory should be) is a permanent
failure, event 2375; a disk error or an exceeded quota is temporary, event
2376, so a full mailbox defers instead of bouncing. Paths are opened relative
to directory descriptors with O_NOFOLLOW: nothing outside the root is reachable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Sequence
from typing import NoReturn

from mailgate.errors import AddressError, PermanentFailure, TemporaryFailure
from mailgate.interchange.connector import Result
from mailgate.model import Claim, Disposition
from mailgate.observe import catalog
from mailgate.observe.events import EventLog
from mailgate.postoffice.address import AddressMap, PostofficeAddress
from mailgate.postoffice.tree import Postoffice, open_dir

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MISSING_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}


def maildir_name(claim: Claim, hostname: str, size: int) -> str:
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{int(claim.received_at)}.M{claim.queue_id}R{claim.recipient_id}.{host},S={size}"


def maildir_content(claim: Claim, body: bytes) -> bytes:
    """What goes in the mailbox: Return-Path and Delivered-To, then the message, LF line ends."""
    trace = f"Return-Path: <{claim.sender}>\nDelivered-To: {claim.address}\n"
    return trace.encode("utf-8", "surrogateescape") + body.replace(b"\r\n", b"\n")


class PostofficeConnector:
    name = "postoffice"

    def __init__(
        self,
        postoffice: Postoffice,
        address_map: AddressMap,
        events: EventLog,
        *,
        hostname: str,
        quota: int = 0,
    ) -> None:
        self.postoffice = postoffice
        self.map = address_map
        self.events = events
        self.hostname = hostname
        self.quota = quota

    def open(self) -> PostofficeSession:
        return PostofficeSession(self)


class PostofficeSession:
    """One interchange thread's delivery context: its temp-name suffix and dirty directories."""

    def __init__(self, connector: PostofficeConnector) -> None:
        self.c = connector
        self.suffix = f"{os.getpid()}_{threading.get_native_id()}"
        self._dirty: list[int] = []

    def deliver(self, claims: Sequence[Claim], body: bytes) -> list[Result]:
        """Deliver to each recipient's mailbox; each recipient fails or succeeds on its own."""
        results = []
        for claim in claims:
            try:
                reply = self.deliver_one(claim, body)
            except TemporaryFailure as exc:
                results.append(Result(Disposition.DEFERRED, exc.reply))
            except PermanentFailure as exc:
                results.append(Result(Disposition.FAILED, exc.reply))
            else:
                results.append(Result(Disposition.DELIVERED, reply))
        return results

    def deliver_one(self, claim: Claim, body: bytes) -> str:
        mailbox = self._mailbox(claim)
        content = maildir_content(claim, body)
        name = maildir_name(claim, self.c.hostname, len(content))
        try:
            with self.c.postoffice.open_mailbox(mailbox) as box:
                return self._write(claim, mailbox, box, name, content)
        except OSError as exc:
            if exc.errno in _MISSING_ERRNOS:
                self._no_mailbox(claim, mailbox)
            raise self._temporary(claim, mailbox, exc) from exc

    def _mailbox(self, claim: Claim) -> PostofficeAddress:
        try:
            mailbox = self.c.map.from_smtp(claim.address)
        except AddressError as exc:
            self._no_mailbox(claim, None, str(exc))
        if mailbox is None:
            self._no_mailbox(claim, None, "not in the postoffice domain")
        return mailbox

    def _write(
        self, claim: Claim, mailbox: PostofficeAddress, box: int, name: str, content: bytes
    ) -> str:
        tmp_fd, new_fd = open_dir("tmp", box), open_dir("new", box)
        try:
            if claim.redelivery and _already_there(box, new_fd, name):
                self._dirty.append(os.dup(new_fd))  # the earlier link may not be synced yet
                return "250 2.0.0 already in mailbox (earlier attempt completed)"
            if self.c.quota:
                self._check_quota(claim, mailbox)
            tmp_name = f"{name}.{self.suffix}"
            _write_file(tmp_fd, tmp_name, content)
            try:
                os.link(tmp_name, name, src_dir_fd=tmp_fd, dst_dir_fd=new_fd, follow_symlinks=False)
            except FileExistsError:
                pass  # an earlier attempt already linked it: exactly one copy
            finally:
                os.unlink(tmp_name, dir_fd=tmp_fd)
            self._dirty.append(os.dup(new_fd))
        finally:
            os.close(tmp_fd)
            os.close(new_fd)
        return f"250 2.0.0 delivered to {mailbox}"

    def _check_quota(self, claim: Claim, mailbox: PostofficeAddress) -> None:
        info = self.c.postoffice.info(mailbox)
        if info.size >= self.c.quota:
            error = f"over quota ({info.size} of {self.c.quota} bytes)"
            self.c.events.emit(
                catalog.MAILBOX_UNAVAILABLE, queue_id=claim.queue_id, mailbox=mailbox, error=error
            )
            raise TemporaryFailure(f"452 4.2.2 mailbox {mailbox} is full")

    def _no_mailbox(
        self, claim: Claim, mailbox: PostofficeAddress | None, why: str = "no such mailbox"
    ) -> NoReturn:
        self.c.events.emit(
            catalog.NO_SUCH_MAILBOX,
            queue_id=claim.queue_id,
            mailbox=mailbox or "-",
            recipient=claim.address,
        )
        raise PermanentFailure(f"550 5.1.1 <{claim.address}>: {why}")

    def _temporary(
        self, claim: Claim, mailbox: PostofficeAddress, exc: OSError
    ) -> TemporaryFailure:
        self.c.events.emit(
            catalog.MAILBOX_UNAVAILABLE,
            queue_id=claim.queue_id,
            mailbox=mailbox,
            error=exc.strerror or repr(exc),
        )
        code = "452 4.2.2" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "451 4.3.0"
        return TemporaryFailure(f"{code} mailbox {mailbox} unavailable: {exc.strerror}")

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        try:
            for fd in dirty:
                os.fsync(fd)
        except OSError as exc:
            raise TemporaryFailure(f"451 4.3.0 could not sync mailbox: {exc.strerror}") from exc
        finally:
            for fd in dirty:
                os.close(fd)

    def close(self) -> None:
        for fd in self._dirty:
            os.close(fd)
        self._dirty = []


def _write_file(dir_fd: int, name: str, content: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)  # a leftover of a crashed attempt by this same thread id
    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)  # never leave a partial file behind
        raise
    finally:
        os.close(fd)


def _already_there(box: int, new_fd: int, name: str) -> bool:
    """Whether an earlier attempt's copy is in new/ or (moved by a reader) in cur/."""
    try:
        os.stat(name, dir_fd=new_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        pass
    cur_fd = open_dir("cur", box)
    try:
        with os.scandir(cur_fd) as entries:
            return any(e.name == name or e.name.startswith(name + ":") for e in entries)
    finally:
        os.close(cur_fd)
