"""receive.pickup: take files dropped in postoffice outboxes into the queue.

Outboxes are `<postoffice>/NET/PO/outbox/` (lower case, so no mailbox can be
named like one). A file is taken only once it has been left unchanged for
`settle` seconds (a writer still appending keeps it back). Taking renames it
into `outbox/.work/` under a name that carries its identity (inode, mtime); that
identity is stored with the queued message in the same transaction, so after a
crash a file already queued is recognised and removed, not sent twice. A file
is removed only once its message is durable (event 2444). A file that cannot be
sent goes to `<data-dir>/badmail/` beside a `.reason` file (event 2445); a
queue failure leaves it to be retried (event 2447). Many files are queued
concurrently, so group commit keeps a full outbox moving.
Security: outboxes and files are opened without following symlinks; names are
never interpreted as paths; pickup is a local submission and may relay.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailgate.config.schema import PickupSettings
from mailgate.errors import StoreError
from mailgate.model import NewMessage, NewRecipient, new_queue_id
from mailgate.observe import catalog, metrics
from mailgate.observe.counters import Counters
from mailgate.observe.events import EventLog
from mailgate.postoffice.address import AddressMap
from mailgate.queue.store import STORE_WAIT, QueueStore
from mailgate.receive.pickup_parse import PickupError, parse_pickup
from mailgate.route.policy import RecipientPolicy
from mailgate.supervise.handle import ThreadHandle

OUTBOX = "outbox"
WORK = ".work"
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class _Taken:
    outbox: Path
    work: Path
    original: str
    queue_id: str
    message: NewMessage
    future: Future[Any]


class Pickup:
    """Body of the `pickup` thread: `settings` is the [pickup] section; a file larger than
    `max_size` ([smtp] max_message_size) goes to badmail; `hostname` names this service in
    the Received: header it adds."""

    def __init__(
        self,
        root: Path,
        badmail: Path,
        settings: PickupSettings,
        store: QueueStore,
        policy: RecipientPolicy,
        address_map: AddressMap,
        events: EventLog,
        counters: Counters | None = None,
        *,
        max_size: int,
        hostname: str,
    ) -> None:
        self.counters = counters or Counters()
        self.max_size = max_size
        self.hostname = hostname
        self.root = root
        self.badmail = badmail
        self.settings = settings
        self.store = store
        self.policy = policy
        self.map = address_map
        self.events = events

    def __call__(self, handle: ThreadHandle) -> None:
        self.recover()
        busy = False
        while not handle.wait(0 if busy else self.settings.interval):
            handle.busy()
            # A full batch means more files are waiting: scan again without pausing.
            busy = any(self.scan(o) >= self.settings.batch for o in list(self.outboxes()))
            handle.progress()
            handle.idle()

    def outboxes(self) -> Iterator[Path]:
        """Every NET/PO/outbox directory (real directories only, no symlinks)."""
        for net in _dirs(self.root):
            for po in _dirs(net):
                outbox = po / OUTBOX
                try:
                    if stat.S_ISDIR(os.lstat(outbox).st_mode):
                        yield outbox
                except OSError:
                    continue

    def recover(self) -> None:
        """Finish files a previous run had taken: remove the queued ones, retake the others."""
        for outbox in self.outboxes():
            work = outbox / WORK
            for path in sorted(_files(work)):
                if self.store.origin_known(self._origin(path)).result(STORE_WAIT):
                    path.unlink(missing_ok=True)
                else:
                    self._finish([t for t in [self._take(outbox, path, path.name)] if t])

    def scan(self, outbox: Path) -> int:
        """Take up to `batch` settled files from one outbox; returns how many were queued."""
        now = time.time()
        taken: list[_Taken] = []
        try:
            entries = os.scandir(outbox)
        except OSError:
            return 0
        with entries:
            for entry in entries:
                if len(taken) >= self.settings.batch:
                    break
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
                if now - info.st_mtime < self.settings.settle:
                    continue  # still being written, perhaps
                work_name = f"{info.st_ino}-{info.st_mtime_ns}-{entry.name}"
                work = outbox / WORK / work_name
                try:
                    work.parent.mkdir(mode=0o700, exist_ok=True)
                    os.rename(entry.path, work)
                except OSError:
                    continue  # taken by someone else, or vanished
                item = self._take(outbox, work, entry.name)
                if item is not None:
                    taken.append(item)
        return self._finish(taken)

    def _origin(self, work: Path) -> str:
        return f"pickup:{work.relative_to(self.root)}"

    def _take(self, outbox: Path, work: Path, original: str) -> _Taken | None:
        """Parse a taken file and submit it; badmail it if it cannot be sent."""
        try:
            data = _read(work, self.max_size)
            queue_id = new_queue_id()
            parsed = parse_pickup(
                data, self.map, hostname=self.hostname, unique=f"{queue_id}.pickup"
            )
        except PickupError as exc:
            self._badmail(outbox, work, original, str(exc))
            return None
        except OSError as exc:
            self._badmail(outbox, work, original, f"cannot read the file: {exc.strerror}")
            return None
        recipients = []
        for address in parsed.recipients:
            verdict = self.policy.check(address)  # a local submission: relaying allowed
            if verdict.accepted and verdict.connector is not None:
                recipients.append(NewRecipient(address, verdict.connector))
            else:
                recipients.append(NewRecipient(address, "-", failed_reply=verdict.reply))
        now = time.time()
        received = (
            f"Received: by {self.hostname} (mailgate pickup from "
            f"{outbox.parent.parent.name}/{outbox.parent.name}) id {queue_id};\r\n"
            f"\t{time.strftime('%a, %d %b %Y %H:%M:%S %z', time.localtime(now))}\r\n"
        ).encode()
        message = NewMessage(
            queue_id=queue_id,
            sender=parsed.sender,
            recipients=tuple(recipients),
            body=received + parsed.body,
            received_at=now,
            client=f"pickup {outbox.parent.parent.name}/{outbox.parent.name}",
            header_message_id=parsed.message_id,
            smtputf8=parsed.smtputf8,
            origin=self._origin(work),
        )
        return _Taken(outbox, work, original, queue_id, message, self.store.enqueue(message))

    def _finish(self, taken: list[_Taken]) -> int:
        """Wait for each submitted file's message to be durable, then remove the file."""
        queued = 0
        for item in taken:
            try:
                item.future.result(STORE_WAIT)
            except (StoreError, TimeoutError) as exc:
                self._put_back(item, str(exc))
                continue
            item.work.unlink(missing_ok=True)
            queued += 1
            message = item.message
            self.counters.add(metrics.MESSAGES_RECEIVED, source="pickup")
            self.counters.add(metrics.BYTES_RECEIVED, len(message.body), source="pickup")
            self.events.emit(  # the commit woke the connectors and reported any bounce
                catalog.PICKED_UP,
                queue_id=item.queue_id,
                file=item.original,
                outbox=item.outbox.relative_to(self.root),
                sender=message.sender,
                recipients=len(message.recipients),
                size=len(message.body),
            )
        return queued

    def _put_back(self, item: _Taken, error: str) -> None:
        self.events.emit(
            catalog.PICKUP_ERROR,
            file=item.original,
            outbox=item.outbox.relative_to(self.root),
            error=error,
        )
        with contextlib.suppress(OSError):  # else it stays in .work; recover() retakes it
            os.rename(item.work, item.outbox / item.original)

    def _badmail(self, outbox: Path, work: Path, original: str, reason: str) -> None:
        self.badmail.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%d%H%M%S")
        where = f"{outbox.parent.parent.name}-{outbox.parent.name}"
        name = _SAFE.sub("_", f"{stamp}-{where}-{original}")
        target = self.badmail / name
        counter = 0
        while target.exists() or target.with_name(target.name + ".reason").exists():
            counter += 1
            target = self.badmail / f"{name}.{counter}"
        os.rename(work, target)
        target.with_name(target.name + ".reason").write_text(
            f"file: {outbox.relative_to(self.root)}/{original}\nreason: {reason}\n"
        )
        self.events.emit(
            catalog.PICKUP_BADMAIL,
            file=original,
            outbox=outbox.relative_to(self.root),
            reason=reason,
            badmail=target,
        )


def _dirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [
                Path(e.path)
                for e in entries
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []


def _files(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _read(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PickupError(f"larger than the message size limit of {limit} bytes")
    return data
