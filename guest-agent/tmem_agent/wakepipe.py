"""A self-pipe: the way another thread (or a signal handler) wakes a thread blocked in poll().

The agent's poll loops (the swap shim's loop, its fallback I/O completions, a userfaultfd
region's fault handler) each register :meth:`WakePipe.fileno` for reading; :meth:`wake` makes
it readable, :meth:`drain` empties it again. Both ends are non-blocking, so waking never blocks
and is safe after :meth:`close` (it does nothing).

Wake-ups coalesce: while one is pending (written and not yet drained) another writes nothing,
so the pipe holds at most one byte and a drain is one read. The flag is cleared only after the
byte is read, and the woken thread looks for work only after draining: a wake-up that found
the flag set is covered by the drain in progress.
"""

from __future__ import annotations

import os


class WakePipe:
    """A non-blocking pipe whose read end becomes readable when someone calls :meth:`wake`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending = False

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        if self._pending:
            return
        self._pending = True
        try:
            os.write(self._write, b"x")
        except OSError:
            pass  # closed

    def drain(self) -> None:
        try:
            os.read(self._read, 4096)
        except BlockingIOError:
            pass
        self._pending = False

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
