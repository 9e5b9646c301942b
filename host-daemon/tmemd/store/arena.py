"""A preallocated, prefaulted arena of 4 KiB frames shared by the page stores.

The arena is the host memory tmem may use: one anonymous mapping, touched once at start so
that later stores never pay first-touch faults. Frames are handed out from a free stack.
``limit_frames`` may be lowered at run time below the arena's size; when no frame is free
under the limit, the arena asks its ``reclaimer`` (the policy: evict ephemeral frames) to free one.

Frames also pay for the store's metadata (see :mod:`.charging`): such frames are taken like any
others, then their memory is handed back to the kernel (:meth:`FrameArena.give_back`) because the
Python objects they pay for live elsewhere. Freed again, such a frame is faulted in by its next
user (one zero-fill fault then, only if it is used at all).
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable

from .. import PAGE_SIZE

log = logging.getLogger(__name__)


class FrameArena:
    """Fixed-size pool of page frames backed by one prefaulted anonymous mmap."""

    def __init__(self, frames: int) -> None:
        if frames <= 0:
            raise ValueError(f"arena needs at least one frame, got {frames}")
        self.nframes = frames
        self.buf = mmap.mmap(-1, frames * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._prefault()
        # Lowest frame numbers are handed out first (pop from the end of a reversed list).
        self._free: list[int] = list(range(frames - 1, -1, -1))
        self.limit_frames = frames
        self.reclaimer: Callable[[], bool] | None = None
        self.failed_alloc = 0

    def _prefault(self) -> None:
        populate = getattr(mmap, "MADV_POPULATE_WRITE", None)
        if populate is not None:
            try:
                self.buf.madvise(populate)
                return
            except OSError:
                pass
        for off in range(0, self.nframes * PAGE_SIZE, PAGE_SIZE):
            self.buf[off] = 0

    @property
    def frames_in_use(self) -> int:
        return self.nframes - len(self._free)

    @property
    def frames_free(self) -> int:
        """Frames that can still be allocated without reclaim, under the current limit."""
        return max(0, min(len(self._free), self.limit_frames - self.frames_in_use))

    def set_limit(self, frames: int) -> None:
        """Set the number of frames that may be in use; reclaim happens lazily on next alloc."""
        if not 0 < frames <= self.nframes:
            raise ValueError(f"frame limit must be in 1..{self.nframes}, got {frames}")
        self.limit_frames = frames

    def alloc_frame(self) -> int | None:
        """Return a free frame number, reclaiming if needed; None when memory is exhausted."""
        free = self._free
        if free and self.nframes - len(free) < self.limit_frames:
            return free.pop()
        reclaim = self.reclaimer
        while reclaim is not None and reclaim():
            if free and self.nframes - len(free) < self.limit_frames:
                return free.pop()
        self.failed_alloc += 1
        return None

    def free_frame(self, frame: int) -> None:
        self._free.append(frame)

    def give_back(self, frames: list[int]) -> None:
        """Return allocated frames' memory to the kernel (one call per run of adjacent frames);
        they stay allocated (and counted)."""
        madvise = self.buf.madvise
        ordered = sorted(frames)
        start = previous = ordered[0]
        for frame in ordered[1:] + [-1]:
            if frame != previous + 1:
                madvise(mmap.MADV_DONTNEED, start * PAGE_SIZE, (previous + 1 - start) * PAGE_SIZE)
                start = frame
            previous = frame

    def close(self) -> None:
        self.buf.close()
