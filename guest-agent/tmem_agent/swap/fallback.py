"""The fallback file: a page tmemd refused is written here, at its own offset, and read back
from here. The file is sparse at the device's size (blocks are used only for pages that were
actually refused), and opened with O_DIRECT where the file system allows it, so the swap path
does not fill the guest's page cache while memory is short. Buffers must then be page-aligned:
the shim's page slots are (they live in an anonymous mapping).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def _libc_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
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

    def write(self, page: int, data: memoryview) -> None:
        """Store one page; returns once the data is in the file (not necessarily on disk)."""
        done = os.pwrite(self.fd, data, page * PAGE_SIZE)
        if done != PAGE_SIZE:
            raise OSError(f"short write of fallback page {page}: {done} bytes")
        self.bytes_written += PAGE_SIZE

    def read(self, page: int, into: memoryview) -> None:
        done = os.preadv(self.fd, [into], page * PAGE_SIZE)
        if done != PAGE_SIZE:
            raise OSError(f"short read of fallback page {page}: {done} bytes")

    def discard(self, pages: list[int]) -> None:
        """Give back the disk blocks of these pages (ascending; best effort: the location map,
        not the file, says whether a page is current)."""
        punch = self._fallocate
        if not pages or punch is None:
            return
        start = prev = pages[0]
        for page in [*pages[1:], -1]:
            if page == prev + 1:
                prev = page
                continue
            length = (prev - start + 1) * PAGE_SIZE
            if punch(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                     start * PAGE_SIZE, length) != 0:
                log.info("cannot punch holes in %s (errno %d); leaving blocks allocated",
                         self.path, ctypes.get_errno())
                self._fallocate = None
                return
            start = prev = page

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def allocated_bytes(self) -> int:
        """Disk space the file uses now (its holes cost nothing)."""
        return os.fstat(self.fd).st_blocks * 512

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
