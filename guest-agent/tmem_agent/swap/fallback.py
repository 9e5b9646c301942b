"""The fallback file: a page tmemd refused is written here, at its own offset, and read back
from here. The file is sparse at the device's size (blocks are used only for pages that were
actually refused), and opened with O_DIRECT where the file system allows it, so the swap path
does not fill the guest's page cache while memory is short. Buffers must then be page-aligned:
the shim's page slots are (they live in an anonymous mapping).

Disk I/O takes far longer than anything else the event loop does, so it runs in the threads
of an :class:`~tmem_agent.ioworker.IoWorker` (:class:`FallbackWorker`): the loop hands them
runs of consecutive pages, goes on serving tmem traffic, and runs each run's completion
itself. Runs may complete out of order; that is only visible
for two runs of the same page in flight at once, which the swap layer never issues (a page
being written is not written again before that write completes), and even then the map ends
up naming the copy whose data the file holds.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Any

from ..ioworker import Done, IoWorker

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02



def _libc_fallocate() -> Any:
    """libc's fallocate(2) (os.posix_fallocate cannot punch holes); None if unavailable."""
    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    func.restype = ctypes.c_int
    return func


class FallbackFile:
    """Whole pages at ``page * 4096`` in one file."""

    def __init__(self, path: str, pages: int, direct: bool = True) -> None:
        self.path = path
        self.pages = pages
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self.direct = False
        fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o600)
                self.direct = True
            except OSError as exc:  # tmpfs and some others refuse O_DIRECT
                log.info("fallback %s without O_DIRECT (%s)", path, exc)
        if fd < 0:
            fd = os.open(path, flags, 0o600)
        self.fd = fd
        size = pages * PAGE_SIZE
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)  # sparse: no blocks until a page is written
        self.bytes_written = 0
        self._fallocate = _libc_fallocate()

    def write(self, first: int, views: list[memoryview]) -> None:
        """Store pages ``first``, ``first + 1``, ... (one write for the run)."""
        done = os.pwritev(self.fd, views, first * PAGE_SIZE)
        if done != len(views) * PAGE_SIZE:
            raise OSError(f"short write of fallback pages {first}+{len(views)}: {done} bytes")
        self.bytes_written += done

    def read(self, first: int, views: list[memoryview]) -> None:
        done = os.preadv(self.fd, views, first * PAGE_SIZE)
        if done != len(views) * PAGE_SIZE:
            raise OSError(f"short read of fallback pages {first}+{len(views)}: {done} bytes")

    def discard(self, pages: list[int]) -> None:
        """Give back the disk blocks of these pages (ascending; best effort: the location map,
        not the file, says whether a page is current)."""
        punch = self._fallocate
        if not pages or punch is None:
            return
        for first, count in runs(pages):
            if punch(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                     first * PAGE_SIZE, count * PAGE_SIZE) != 0:
                log.info("cannot punch holes in %s (errno %d); leaving blocks allocated",
                         self.path, ctypes.get_errno())
                self._fallocate = None
                return

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def allocated_bytes(self) -> int:
        """Disk space the file uses now (its holes cost nothing)."""
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def runs(pages: list[int]) -> list[tuple[int, int]]:
    """(first, count) of each stretch of consecutive numbers in ascending ``pages``."""
    out: list[tuple[int, int]] = []
    for page in pages:
        if out and page == out[-1][0] + out[-1][1]:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((page, 1))
    return out


class FallbackWorker(IoWorker):
    """Fallback reads and writes, a run of consecutive pages each, in the I/O threads."""

    def __init__(self, fallback: FallbackFile, threads: int = 4) -> None:
        super().__init__("fallback-io", threads)
        self.file = fallback

    def write(self, first: int, views: list[memoryview], done: Done) -> None:
        self.submit(functools.partial(self.file.write, first, views), done)

    def read(self, first: int, views: list[memoryview], done: Done) -> None:
        self.submit(functools.partial(self.file.read, first, views), done)
