"""postoffice.flush: the fsyncs of a batch of deliveries, run side by side.

A postoffice thread writes and links each message of its batch, then makes the batch
durable before recording it: one fsync per delivered file and one per mailbox
directory. On a disk whose flush is slow (a network block device, where independent
flushes proceed in parallel) doing those one after another made the flush latency,
times the batch, the cost of each batch; Postfix's delivery agents, one process each,
flush in parallel. So the fsyncs go to a few supervised `postoffice-flush-N` threads
(Python releases the GIL in fsync) and the caller waits for them all.

How it fails: the first OSError of a batch is raised to the caller once every fsync of
the batch has ended (the caller defers the whole batch, which is then redelivered
idempotently). With no flush thread running (none configured, or all stopped), the
caller's own thread does every fsync, as before.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future, wait

from mailgate.supervise.handle import ThreadHandle

_Job = tuple[int, "Future[None]"]


class Flusher:
    """fsync many descriptors at once; `run` is the body of each flush thread."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = 0
        self.batches = 0
        self.fsyncs = 0

    def fsync_all(self, fds: Sequence[int]) -> None:
        """fsync every descriptor in `fds`; the first failure is raised after all ended."""
        self.batches += 1
        self.fsyncs += len(fds)
        if self._running == 0 or len(fds) < 2:
            for fd in fds:
                os.fsync(fd)
            return
        futures: list[Future[None]] = []
        for fd in fds[1:]:
            future: Future[None] = Future()
            self._jobs.put((fd, future))
            futures.append(future)
        first: OSError | None = None
        try:
            os.fsync(fds[0])  # the caller's thread takes one share itself
        except OSError as exc:
            first = exc
        while wait(futures, timeout=0.5).not_done:
            if self._running == 0:  # every flush thread ended meanwhile: finish here
                self._drain()
        for each in futures:
            error = each.exception()
            if first is None and isinstance(error, OSError):
                first = error
        if first is not None:
            raise first

    def wake(self) -> None:
        self._jobs.put(None)

    def run(self, handle: ThreadHandle) -> None:
        """Take fsyncs until asked to stop; what is queued then is done by the threads still
        running or, by the last to end, itself (callers are never stranded)."""
        with self._lock:
            self._running += 1
        handle.idle()
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=0.5)
                except queue.Empty:
                    if handle.stopping:
                        return
                    continue
                if job is None:  # one wake per thread asked to stop (its on_stop)
                    if handle.stopping:
                        return  # fsyncs still queued: a sibling, or the last one out, does them
                    continue
                handle.busy()
                fd, future = job
                try:
                    os.fsync(fd)
                except OSError as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(None)
                handle.progress()
                handle.idle()
        finally:
            with self._lock:
                self._running -= 1
            self._drain()

    def _drain(self) -> None:
        """A thread ending with jobs queued (its siblings gone too) does them itself."""
        if self._running:
            return
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                fd, future = job
                try:
                    os.fsync(fd)
                    future.set_result(None)
                except OSError as exc:
                    future.set_exception(exc)
