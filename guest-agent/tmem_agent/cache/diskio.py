"""The cached disk and the threads that do its I/O.

The disk is opened with O_DIRECT: the guest's page cache already holds the file system's
pages on the NBD device above, so caching the disk's blocks again below it would keep the
same data twice in the memory the cache is meant to spare (and a tmem hit would save no I/O
the page cache had not saved anyway). O_DIRECT also means a write is on the device when
``pwritev`` returns, before the NBD reply. It needs page-aligned buffers: the agent's page
slots are. Where O_DIRECT is refused (tmpfs, some test set-ups) the disk is opened buffered
and every read and write is followed by POSIX_FADV_DONTNEED for its range (best effort: it
drops clean pages and starts writing back dirty ones; tmpfs ignores it).

Disk I/O runs in the threads of an :class:`~tmem_agent.ioworker.IoWorker`, as the swap
fallback's does.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import stat
import struct

from ..swap.fallback import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, _libc_fallocate

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
BLKDISCARD = 0x1277  # _IO(0x12, 119)
BLKZEROOUT = 0x127F  # _IO(0x12, 127)
RANGE = struct.Struct("=QQ")  # start, length in bytes
ZERO_PAGES = 64  # the aligned zero buffer written where nothing better zeroes blocks



class DiskFile:
    """A block device or regular file read and written in whole 4 KiB blocks."""

    def __init__(self, path: str, direct: bool = True) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC
        self.direct = False
        fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(path, flags | os.O_DIRECT)
                self.direct = True
            except OSError as exc:  # tmpfs refuses O_DIRECT
                log.info("disk %s without O_DIRECT (%s): fadvise DONTNEED instead", path, exc)
        if fd < 0:
            fd = os.open(path, flags)
        self.fd = fd
        self.is_block = stat.S_ISBLK(os.fstat(fd).st_mode)
        self.size = os.lseek(fd, 0, os.SEEK_END) // PAGE_SIZE * PAGE_SIZE
        if not self.size:
            os.close(fd)
            raise OSError(f"{path} is empty: nothing to cache")
        self._fallocate = None if self.is_block else _libc_fallocate()
        self._zero = mmap.mmap(-1, ZERO_PAGES * PAGE_SIZE)  # page-aligned, all zero
        self._zero_view = memoryview(self._zero)

    @property
    def blocks(self) -> int:
        return self.size // PAGE_SIZE

    def _dontneed(self, first: int, count: int) -> None:
        if not self.direct:
            os.posix_fadvise(self.fd, first * PAGE_SIZE, count * PAGE_SIZE,
                             os.POSIX_FADV_DONTNEED)

    def read(self, first: int, views: list[memoryview]) -> None:
        done = os.preadv(self.fd, views, first * PAGE_SIZE)
        if done != len(views) * PAGE_SIZE:
            raise OSError(f"short read of blocks {first}+{len(views)}: {done} bytes")
        self._dontneed(first, len(views))

    def write(self, first: int, views: list[memoryview], sync: bool = False) -> None:
        done = os.pwritev(self.fd, views, first * PAGE_SIZE)
        if done != len(views) * PAGE_SIZE:
            raise OSError(f"short write of blocks {first}+{len(views)}: {done} bytes")
        if sync:
            os.fdatasync(self.fd)
        self._dontneed(first, len(views))  # buffered: starts writeback, drops what is clean

    def zero(self, first: int, count: int) -> None:
        """Blocks read as zeros afterwards (the device's zeroing, a hole, or zeros written)."""
        start, length = first * PAGE_SIZE, count * PAGE_SIZE
        if self.is_block:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, RANGE.pack(start, length))
                return
            except OSError as exc:
                log.debug("BLKZEROOUT refused (%s): writing zeros", exc)
        elif self._fallocate is not None and self._fallocate(
                self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, length) == 0:
            return
        at = first
        while at < first + count:
            n = min(ZERO_PAGES, first + count - at)
            self.write(at, [self._zero_view[: n * PAGE_SIZE]])
            at += n

    def discard(self, first: int, count: int) -> None:
        """Tell the device these blocks are unused (best effort: their contents are then
        whatever the device returns, zeros for a file's hole)."""
        start, length = first * PAGE_SIZE, count * PAGE_SIZE
        try:
            if self.is_block:
                fcntl.ioctl(self.fd, BLKDISCARD, RANGE.pack(start, length))
            elif self._fallocate is not None:
                self._fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start,
                                length)
        except OSError as exc:
            log.debug("discard of blocks %d+%d refused: %s", first, count, exc)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._zero_view.release()
        self._zero.close()
