"""A self-pipe: the way another thread (or a signal handler) wakes a thread blocked in poll().

The agent's poll loops (the swap shim's loop, its fallback I/O completions, a userfaultfd
region's fault handler) each register :meth:`WakePipe.fileno` for reading; :meth:`wake` makes
it readable, :meth:`drain` empties it again. Both ends are non-blocking, so waking never blocks
(a full pipe already holds a wake-up) and is safe after :meth:`close` (it does nothing).
"""

from __future__ import annotations

import os


class WakePipe:
    """A non-blocking pipe whose read end becomes readable when someone calls :meth:`wake`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        try:
            os.write(self._write, b"x")
        except OSError:
            pass  # full of wake-ups already, or closed

    def drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
