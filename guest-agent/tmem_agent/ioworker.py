"""Threads for blocking file and disk I/O, with completions run in the caller's poll loop.

Disk I/O takes far longer than anything else the agent's loop does (close to a millisecond a
page in a TCG guest), so the swap fallback and the block cache hand it to an :class:`IoWorker`:
a job runs in one of its threads, and its completion (``done(error)``) runs in the loop's
thread once the loop sees :meth:`IoWorker.fileno` readable and calls :meth:`IoWorker.complete`.
Several threads keep several requests in flight on the disk, so jobs may complete out of
order. The threads' stacks are small: memory locked by mlockall(MCL_FUTURE) is resident at
once.
"""

from __future__ import annotations

import collections
import queue
import select
import threading
from collections.abc import Callable

from .wakepipe import WakePipe

THREAD_STACK = 256 << 10

Done = Callable[[OSError | None], None]  # a job's completion: None, or the job's OSError


class IoWorker:
    """Runs jobs in ``threads`` threads (named ``<name>-N``); completions in the loop."""

    def __init__(self, name: str, threads: int = 4) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], Done] | None] = \
            queue.SimpleQueue()
        self._finished: collections.deque[tuple[Done, OSError | None]] = collections.deque()
        self._wake = WakePipe()
        self._count = threads
        self._threads: list[threading.Thread] = []
        self.pending = 0
        self.thread_setup: dict[str, str] = {}

    def start(self, setup: Callable[[], dict[str, str]] | None = None) -> None:
        """Start the threads; ``setup`` runs first in each (the agent's per-thread hardening:
        a thread created before the process was hardened would lack it)."""
        old = threading.stack_size(THREAD_STACK)
        try:
            for i in range(self._count):
                thread = threading.Thread(target=self._work, args=(setup,),
                                          name=f"{self.name}-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)
        finally:
            threading.stack_size(old)

    def fileno(self) -> int:
        """Readable when completions are waiting for :meth:`complete`."""
        return self._wake.fileno()

    def submit(self, job: Callable[[], None], done: Done) -> None:
        self.pending += 1
        self._jobs.put((job, done))

    def _work(self, setup: Callable[[], dict[str, str]] | None) -> None:
        if setup is not None:
            self.thread_setup = setup()
        while (item := self._jobs.get()) is not None:
            job, done = item
            error: OSError | None = None
            try:
                job()
            except OSError as exc:
                error = exc
            self._finished.append((done, error))
            self._wake.wake()

    def complete(self) -> None:
        """Run the completions of finished jobs (from the loop's thread)."""
        self._wake.drain()
        finished = self._finished
        while finished:
            done, error = finished.popleft()
            self.pending -= 1
            done(error)

    def drain(self) -> None:
        """Wait for every job handed over so far and run its completion."""
        while self.pending:
            select.select([self._wake.fileno()], [], [], 1.0)
            self.complete()

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(10)
        self._threads = []
        self._wake.close()
