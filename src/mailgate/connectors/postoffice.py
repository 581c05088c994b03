"""connectors.postoffice: deliver into postoffice Maildirs, crash-safe and without duplicates.

A message for recipient R of queue id Q gets the fixed Maildir name
`<received>.M<Q>R<rid>.<host>,S=<size>` (host: the postoffice's domain, the same on
every node that shares it, so the name is one per recipient whichever node delivers).
Delivery writes `tmp/<name>.<machine>_<pid>_<thread>`, then link()s it to `new/<name>`:
link fails with EEXIST rather than overwrite, so a second delivery of the same recipient
(after a crash, or by a thread whose lease expired) can never make a second copy. Before
recording any outcome of its batch the thread fsyncs every file it delivered and every
`new/` it touched (`flush`), side by side in the flush threads (postoffice/flush.py): on
a slow-flush disk one batch costs about one flush, not one per message. When the queue
says an earlier attempt may have succeeded (`redelivery`), `cur/` is searched too, in
case the reader already moved the message; a copy shorter than its name's S= (a power
failure between link and flush) is not taken for a delivery: a complete one is delivered.

An administrator's command on a message being delivered cancels the attempt
(`cancel`, from the control thread): the delivery stops before its next link into
a mailbox; a link already made is a delivery that happened, and is reported so.

Errors: no mailbox (or a symlink where a directory should be) is a permanent
failure, event 2375; a disk error or an exceeded quota is temporary, event
2376, so a full mailbox defers instead of bouncing. The quota is checked against
the mailbox's Maildir++ `maildirsize` (postoffice/quota.py), never by listing it.
Paths are opened relative to directory descriptors with O_NOFOLLOW: nothing
outside the root is reachable. A delivered file gets `[postoffice] owner`, `group` and
`mode` (postoffice/owner.py) through its descriptor before its first byte is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from mailgate.errors import AddressError, PermanentFailure, TemporaryFailure
from mailgate.interchange.connector import Result
from mailgate.interchange.inflight import CANCELLED_REPLY
from mailgate.model import Claim, Disposition
from mailgate.observe import catalog, metrics
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.postoffice.address import AddressMap, PostofficeAddress
from mailgate.postoffice.flush import Flusher
from mailgate.postoffice.owner import Ownership
from mailgate.postoffice.quota import MaildirSize
from mailgate.postoffice.tree import Postoffice, open_dir
from mailgate.supervise import faults

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MISSING_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP}
MAX_UNSYNCED = 64  # delivered files held open for the batch's flush; more are synced at once


def maildir_name(claim: Claim, hostname: str, size: int) -> str:
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{int(claim.received_at)}.M{claim.queue_id}R{claim.recipient_id}.{host},S={size}"


def maildir_content(claim: Claim, body: bytes) -> bytes:
    """What goes in the mailbox: Return-Path and Delivered-To, then the message, LF line ends."""
    trace = f"Return-Path: <{claim.sender}>\nDelivered-To: {claim.address}\n"
    return trace.encode("utf-8", "surrogateescape") + body.replace(b"\r\n", b"\n")


class PostofficeConnector:
    name = "postoffice"
    # Deliveries are local and short: a second thread is for a backlog (interchange/worker.py).
    helpers_on_backlog = True

    def __init__(
        self,
        postoffice: Postoffice,
        address_map: AddressMap,
        events: EventLog,
        *,
        hostname: str,
        quota: int = 0,
        counters: Counters | None = None,
        flusher: Flusher | None = None,
    ) -> None:
        self.postoffice = postoffice
        self.flusher = flusher or Flusher()  # no threads: the delivering thread fsyncs
        self.map = address_map
        self.events = events
        self.hostname = hostname
        self.quota = quota
        self.counters = counters
        self.ownership = postoffice.ownership  # of delivered files and maildirsize
        problem = self.ownership.problem()
        if problem is not None:
            events.emit(
                catalog.POSTOFFICE_OWNER_REFUSED, owner=self.ownership.label, reason=problem
            )

    def quota_scanned(self) -> None:
        """A mailbox was listed to rebuild its maildirsize (rare: see postoffice/quota.py)."""
        if self.counters is not None:
            self.counters.add(metrics.POSTOFFICE_QUOTA_SCANS)

    def open(self) -> PostofficeSession:
        return PostofficeSession(self)


@dataclass(slots=True)
class _Box:
    """A mailbox this thread delivered to, its directories kept open between deliveries."""

    path: str  # <root>/NET/PO/MAILBOX: checked before each use, see PostofficeSession._open
    identity: tuple[int, int]  # (st_dev, st_ino) of the mailbox directory when opened
    box: int
    tmp: int
    new: int

    def close(self) -> None:
        for fd in (self.tmp, self.new, self.box):
            os.close(fd)


class PostofficeSession:
    """One interchange thread's delivery context: its temp-name suffix and open mailboxes.

    Opening a mailbox safely (root, NET, PO, MAILBOX, tmp, new, one O_NOFOLLOW step at a
    time) is 12 system calls, each releasing and retaking Python's GIL; under load that was
    most of a delivery's cost besides the fsync. So a thread keeps the mailboxes it delivered
    to open, and before each use checks with one stat that the path still names the same
    directory: a mailbox removed (renamed to the trash) or replaced is opened afresh through
    the safe walk. A cached directory that fails is retried once, freshly opened.
    """

    KEEP_OPEN = 16  # mailboxes kept open per thread (3 descriptors each), least recently used go

    def __init__(self, connector: PostofficeConnector) -> None:
        self.c = connector
        # Unique among the machines that share the postoffice, for the temporary file.
        machine = socket.gethostname().replace("/", "_").replace(":", "_")
        self.suffix = f"{machine}_{os.getpid()}_{threading.get_native_id()}"
        self._boxes: dict[PostofficeAddress, _Box] = {}
        self._dirty: dict[int, _Box] = {}  # boxes whose new/ needs an fsync, by id()
        self._unsynced: list[int] = []  # open descriptors of files delivered, not yet synced
        self._retired: list[_Box] = []  # no longer cached, closed at the next flush
        # What `cancel` (another thread) needs to know; the lock orders it against a link.
        self._lock = threading.Lock()
        self._current: str | None = None
        self._done: str | None = None
        self._linked: str | None = None
        self._linking = False
        self._cancelled: str | None = None

    def deliver(self, claims: Sequence[Claim], body: bytes) -> list[Result]:
        """Deliver to each recipient's mailbox; each recipient fails or succeeds on its own."""
        queue_id = claims[0].queue_id
        with self._lock:
            if self._cancelled != queue_id:
                self._cancelled = None  # a late cancel for a message delivered before
            self._current = queue_id
        try:
            return self._deliver_each(claims, body)
        finally:
            with self._lock:
                self._current, self._done = None, queue_id
                if self._cancelled == queue_id:
                    # This attempt is over: its cancel must not stop the message's next one
                    # (after `queue release`, on this same session).
                    self._cancelled = None

    def cancel(self, queue_id: str) -> str:
        """Stop the delivery of `queue_id` before its next link (called from the control
        thread); how it stops."""
        with self._lock:
            if self._current != queue_id and self._done == queue_id:
                return "already attempted; its outcome is being recorded"
            self._cancelled = queue_id
            if self._current != queue_id:
                return "not started yet: skipped"
            if self._linking:
                return "being linked into the mailbox: left to finish"
            if self._linked == queue_id:
                return "already linked into a mailbox; stops before any other"
            return "stops before it writes into the mailbox"

    def _deliver_each(self, claims: Sequence[Claim], body: bytes) -> list[Result]:
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
        retry = mailbox in self._boxes  # an open directory may have gone stale
        while True:
            try:
                return self._write(claim, mailbox, self._open(mailbox), name, content)
            except OSError as exc:
                self._forget(mailbox)
                if retry:
                    retry = False
                    continue
                if exc.errno in _MISSING_ERRNOS:
                    self._no_mailbox(claim, mailbox)
                raise self._temporary(claim, mailbox, exc) from exc

    def _open(self, mailbox: PostofficeAddress) -> _Box:
        cached = self._boxes.get(mailbox)
        if cached is not None:
            try:
                st = os.stat(cached.path, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == cached.identity:
                    self._boxes[mailbox] = self._boxes.pop(mailbox)  # now the most recent
                    return cached
            except OSError:
                pass
            self._forget(mailbox)
        root = self.c.postoffice.root
        path = os.path.join(root, mailbox.net, mailbox.po, mailbox.mailbox)
        with self.c.postoffice.open_mailbox(mailbox) as fd:
            st = os.fstat(fd)
            opened: list[int] = []
            try:
                for sub in ("tmp", "new"):
                    opened.append(open_dir(sub, fd))
                opened.append(os.dup(fd))
            except OSError:
                for each in opened:
                    os.close(each)
                raise
        tmp, new, box = opened
        self._boxes[mailbox] = entry = _Box(path, (st.st_dev, st.st_ino), box, tmp, new)
        return entry

    def _forget(self, mailbox: PostofficeAddress) -> None:
        box = self._boxes.pop(mailbox, None)
        if box is None:
            return
        if id(box) in self._dirty:
            self._retired.append(box)  # its new/ is still to be synced
        else:
            box.close()

    def _mailbox(self, claim: Claim) -> PostofficeAddress:
        try:
            mailbox = self.c.map.from_smtp(claim.address)
        except AddressError as exc:
            self._no_mailbox(claim, None, str(exc))
        if mailbox is None:
            self._no_mailbox(claim, None, "not in the postoffice domain")
        return mailbox

    def _write(
        self, claim: Claim, mailbox: PostofficeAddress, box: _Box, name: str, content: bytes
    ) -> str:
        if claim.redelivery and _already_there(box.box, box.new, name, len(content)):
            self._dirty[id(box)] = box  # the earlier link may not be synced yet
            return "250 2.0.0 already in mailbox (earlier attempt completed)"
        size = None
        if self.c.quota:
            size = MaildirSize(
                box.box, box.tmp, self.c.quota, self.suffix, self.c.quota_scanned, self.c.ownership
            )
        try:
            if size is not None:
                self._check_quota(claim, mailbox, size.usage().bytes)
            tmp_name = f"{name}.{self.suffix}"
            fd = _write_file(box.tmp, tmp_name, content, self.c.ownership)
            try:
                faults.check("postoffice.link")  # tests: a delivery in flight, not yet in new/
                linked = self._link(claim.queue_id, box, tmp_name, name)
            except BaseException:
                os.close(fd)
                raise
            finally:
                os.unlink(tmp_name, dir_fd=box.tmp)
            self._unsynced.append(fd)  # synced by `flush`, before any outcome is recorded
            if len(self._unsynced) >= MAX_UNSYNCED:
                self._sync_files()
            if size is not None and linked:
                size.add(len(content))
        finally:
            if size is not None:
                size.close()
        self._dirty[id(box)] = box
        faults.check("postoffice.linked")  # tests: in new/, the outcome not yet recorded
        return f"250 2.0.0 delivered to {mailbox}"

    def _link(self, queue_id: str, box: _Box, tmp_name: str, name: str) -> bool:
        """Put the written file in new/: the moment of delivery, unless it was cancelled.
        False if an earlier attempt had already linked it (exactly one copy)."""
        with self._lock:
            if self._cancelled == queue_id:
                raise TemporaryFailure(CANCELLED_REPLY)
            self._linking = True
        linked = True
        try:
            os.link(tmp_name, name, src_dir_fd=box.tmp, dst_dir_fd=box.new, follow_symlinks=False)
        except FileExistsError:
            linked = False
        finally:
            with self._lock:
                self._linking = False
        self._linked = queue_id
        return linked

    def _check_quota(self, claim: Claim, mailbox: PostofficeAddress, used: int) -> None:
        if used >= self.c.quota:
            error = f"over quota ({used} of {self.c.quota} bytes)"
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

    def _sync_files(self) -> None:
        files, self._unsynced = self._unsynced, []
        try:
            self.c.flusher.fsync_all(files)
        finally:
            for fd in files:
                os.close(fd)

    def flush(self) -> None:
        """fsync every file delivered and every new/ linked into since the last flush
        (one per mailbox, not per file), side by side."""
        with self._lock:  # the batch is over: a cancel of one it skipped is spent too
            self._cancelled = None
        dirty, self._dirty = list(self._dirty.values()), {}
        retired, self._retired = self._retired, []
        files, self._unsynced = self._unsynced, []
        try:
            self.c.flusher.fsync_all([*files, *(box.new for box in dirty)])
        except OSError as exc:
            raise TemporaryFailure(f"451 4.3.0 could not sync mailbox: {exc.strerror}") from exc
        finally:
            for fd in files:
                os.close(fd)
            for box in retired:
                box.close()
            while len(self._boxes) > self.KEEP_OPEN:
                self._forget(next(iter(self._boxes)))  # the least recently used

    def close(self) -> None:
        for fd in self._unsynced:
            os.close(fd)
        for box in [*self._boxes.values(), *self._retired]:
            box.close()
        self._boxes, self._dirty, self._retired, self._unsynced = {}, {}, [], []


def _write_file(dir_fd: int, name: str, content: bytes, ownership: Ownership) -> int:
    """Write `name` in `dir_fd`; its descriptor, open, for the caller to fsync and close."""
    try:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
    except FileExistsError:  # a leftover of a crashed attempt by this same thread id
        os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        ownership.apply(fd)  # before a byte is written, on the descriptor: never a path
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)  # never leave a partial file behind
        os.close(fd)
        raise
    return fd


def _already_there(box: int, new_fd: int, name: str, size: int) -> bool:
    """Whether an earlier attempt's complete copy is in new/ or (moved by a reader) in
    cur/. One cut short by a power failure before its flush is removed from new/ (it was
    never reported delivered) and left alone in cur/ (a reader has it)."""
    try:
        st = os.stat(name, dir_fd=new_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if st.st_size == size:
            return True
        os.unlink(name, dir_fd=new_fd)
        return False
    cur_fd = open_dir("cur", box)
    try:
        with os.scandir(cur_fd) as entries:
            return any(
                (e.name == name or e.name.startswith(name + ":"))
                and e.stat(follow_symlinks=False).st_size == size
                for e in entries
            )
    finally:
        os.close(cur_fd)
