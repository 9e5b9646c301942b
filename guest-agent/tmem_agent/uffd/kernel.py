"""userfaultfd through ctypes: the system call, its ioctls and structures, and the memory calls a
region needs (anonymous mmap, madvise). Standard library only; Linux on x86_64.

The layouts follow ``<linux/userfaultfd.h>``. Every ioctl here is issued with the GIL held
(``PyDLL``): they are short, never touch region memory that could fault, and so the fault-handler
thread does not hand the GIL to a thread that would only make it wait again. Whoever touches a
registered region must do the opposite: release the GIL (see :mod:`tmem_agent.uffd.region`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct

log = logging.getLogger(__name__)

PAGE = 4096
SYS_USERFAULTFD = 323  # x86_64
DEV_USERFAULTFD = "/dev/userfaultfd"

UFFD_API = 0xAA
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (UFFD_API << 8) | nr


class UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class UffdioRegister(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioCopy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class UffdioZeropage(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64),
                ("zeropage", ctypes.c_int64)]


class UffdioWriteprotect(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64)]


RW = _IOC_READ | _IOC_WRITE
UFFDIO_API = _ioc(RW, 0x3F, ctypes.sizeof(UffdioApi))
UFFDIO_REGISTER = _ioc(RW, 0x00, ctypes.sizeof(UffdioRegister))
UFFDIO_UNREGISTER = _ioc(_IOC_READ, 0x01, ctypes.sizeof(UffdioRange))
UFFDIO_WAKE = _ioc(_IOC_READ, 0x02, ctypes.sizeof(UffdioRange))
UFFDIO_COPY = _ioc(RW, 0x03, ctypes.sizeof(UffdioCopy))
UFFDIO_ZEROPAGE = _ioc(RW, 0x04, ctypes.sizeof(UffdioZeropage))
UFFDIO_WRITEPROTECT = _ioc(RW, 0x06, ctypes.sizeof(UffdioWriteprotect))
USERFAULTFD_IOC_NEW = UFFD_API << 8  # _IO(0xAA, 0x00) on /dev/userfaultfd

# Bits of the ``ioctls`` a register answers with: the ioctl numbers' low byte.
IOCTL_BITS = {"wake": 1 << 0x02, "copy": 1 << 0x03, "zeropage": 1 << 0x04,
              "writeprotect": 1 << 0x06}

FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
REGISTER_MODE_MISSING = 1
REGISTER_MODE_WP = 2
COPY_MODE_DONTWAKE = 1
COPY_MODE_WP = 2
ZEROPAGE_MODE_DONTWAKE = 1
WRITEPROTECT_MODE_WP = 1
WRITEPROTECT_MODE_DONTWAKE = 2

EVENT_PAGEFAULT = 0x12
PAGEFAULT_FLAG_WRITE = 1
PAGEFAULT_FLAG_WP = 2
MSG = struct.Struct("<BBHIQQQ")  # event, 3 reserved fields, flags, address, thread id
MSG_SIZE = MSG.size  # 32

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x02, 0x20, 0x4000
MADV_DONTNEED = 4
MADV_NOHUGEPAGE = 15
MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL (see the module's docstring)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class UffdError(OSError):
    """A userfaultfd call failed."""


class UffdUnavailable(UffdError):
    """This process cannot use userfaultfd the way a region needs (no permission, no kernel
    support, no write-protect mode for anonymous memory)."""


def _fail(what: str, cls: type[UffdError] = UffdError) -> UffdError:
    code = ctypes.get_errno()
    return cls(code, f"{what}: {os.strerror(code)}")


def map_anonymous(size: int) -> int:
    """Address of ``size`` bytes of fresh private anonymous memory (no swap reservation),
    not locked and with no page present, even in a process that called
    ``mlockall(MCL_FUTURE)`` (the agent's hardening does): such a process gets every new
    mapping locked, and a locked readable mapping is populated at once, which would make
    every page resident and ``MADV_DONTNEED`` fail. So the memory is mapped inaccessible
    (nothing to populate), unlocked, and only then made readable and writable."""
    addr = _libc.mmap(None, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                      -1, 0)
    if addr in (None, MAP_FAILED):
        raise _fail(f"mmap of {size} bytes")
    try:
        if _libc.munlock(addr, size) != 0:
            raise _fail("munlock")
        if _libc.mprotect(addr, size, PROT_READ | PROT_WRITE) != 0:
            raise _fail("mprotect")
    except UffdError:
        _libc.munmap(addr, size)
        raise
    return int(addr)


def unmap(addr: int, size: int) -> None:
    if _libc.munmap(addr, size) != 0:
        raise _fail("munmap")


def madvise(addr: int, size: int, advice: int) -> None:
    if _libc.madvise(addr, size, advice) != 0:
        raise _fail(f"madvise({advice})")


def _open_fd() -> int:
    """A non-blocking userfaultfd: the system call, else /dev/userfaultfd (Linux 6.1+, for
    processes the system call refuses)."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    fd = _libc.syscall(SYS_USERFAULTFD, flags)
    if fd >= 0:
        return int(fd)
    first = ctypes.get_errno()
    try:
        dev = os.open(DEV_USERFAULTFD, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise UffdUnavailable(first, f"userfaultfd: {os.strerror(first)}; "
                                     f"{DEV_USERFAULTFD}: {exc.strerror}") from None
    try:
        fd = _libc.ioctl(dev, USERFAULTFD_IOC_NEW, flags)
        if fd < 0:
            raise _fail(f"userfaultfd: {os.strerror(first)}; {DEV_USERFAULTFD}",
                        UffdUnavailable)
        return int(fd)
    finally:
        os.close(dev)


class Uffd:
    """One userfaultfd with the write-protect feature enabled; the ioctls a region uses.

    Each method raises :class:`UffdError` with the kernel's errno, except where a caller has a
    use for the errno (``copy`` and ``zeropage`` report EEXIST and EAGAIN instead).
    """

    def __init__(self) -> None:
        self.fd = _open_fd()
        api = UffdioApi(UFFD_API, FEATURE_PAGEFAULT_FLAG_WP, 0)
        if _libc.ioctl(self.fd, UFFDIO_API, ctypes.byref(api)) != 0:
            err = _fail("UFFDIO_API with the write-protect feature", UffdUnavailable)
            os.close(self.fd)
            raise err
        self.features = int(api.features)
        self._range = UffdioRange()
        self._copy = UffdioCopy()
        self._zero = UffdioZeropage()
        self._wp = UffdioWriteprotect()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def register(self, addr: int, size: int) -> int:
        """Register missing and write-protect faults of a range; the ioctls it allows (a
        missing one raises :class:`UffdUnavailable`)."""
        reg = UffdioRegister(UffdioRange(addr, size), REGISTER_MODE_MISSING | REGISTER_MODE_WP)
        if _libc.ioctl(self.fd, UFFDIO_REGISTER, ctypes.byref(reg)) != 0:
            raise _fail("UFFDIO_REGISTER (missing and write-protect, anonymous memory)",
                        UffdUnavailable)
        absent = [name for name, bit in IOCTL_BITS.items() if not reg.ioctls & bit]
        if absent:
            raise UffdUnavailable(errno.ENOTSUP, f"the registered range lacks {absent}")
        return int(reg.ioctls)

    def unregister(self, addr: int, size: int) -> None:
        rng = UffdioRange(addr, size)
        if _libc.ioctl(self.fd, UFFDIO_UNREGISTER, ctypes.byref(rng)) != 0:
            raise _fail("UFFDIO_UNREGISTER")

    def copy(self, dst: int, src: int, size: int, write_protect: bool = False) -> int:
        """Map a copy of ``size`` bytes at ``src`` into the missing pages at ``dst`` and wake
        whoever waits there; 0, or the errno (EEXIST: a page was present, EAGAIN: the
        mapping changed) with ``copied`` bytes done."""
        c = self._copy
        c.dst, c.src, c.len = dst, src, size
        c.mode = COPY_MODE_WP if write_protect else 0
        c.copy = 0
        return self._fill(UFFDIO_COPY, c, f"UFFDIO_COPY at {dst:#x}+{size}")

    def _fill(self, request: int, arg: ctypes.Structure, what: str) -> int:
        """A filling ioctl (COPY, ZEROPAGE): 0, or the errno another filler or a changed
        mapping explains (EEXIST, EAGAIN); any other failure raises."""
        if _libc.ioctl(self.fd, request, ctypes.byref(arg)) == 0:
            return 0
        code = ctypes.get_errno()
        if code in (errno.EEXIST, errno.EAGAIN):
            return code
        raise UffdError(code, f"{what}: {os.strerror(code)}")

    @property
    def copied(self) -> int:
        """Bytes the last ``copy`` mapped (negative: an errno)."""
        return int(self._copy.copy)

    @property
    def zeroed(self) -> int:
        """Bytes the last ``zeropage`` mapped (negative: an errno)."""
        return int(self._zero.zeropage)

    def zeropage(self, dst: int, size: int) -> int:
        """Map the zero page over the missing pages at ``dst`` and wake; 0 or EEXIST/EAGAIN."""
        z = self._zero
        z.range.start, z.range.len, z.mode, z.zeropage = dst, size, 0, 0
        return self._fill(UFFDIO_ZEROPAGE, z, f"UFFDIO_ZEROPAGE at {dst:#x}+{size}")

    def writeprotect(self, addr: int, size: int, protect: bool) -> None:
        """Set (no wake) or clear (and wake) write protection of present pages."""
        wp = self._wp
        wp.range.start, wp.range.len = addr, size
        wp.mode = WRITEPROTECT_MODE_WP if protect else 0
        if _libc.ioctl(self.fd, UFFDIO_WRITEPROTECT, ctypes.byref(wp)) != 0:
            raise _fail(f"UFFDIO_WRITEPROTECT({int(protect)}) at {addr:#x}+{size}")

    def wake(self, addr: int, size: int) -> None:
        rng = self._range
        rng.start, rng.len = addr, size
        if _libc.ioctl(self.fd, UFFDIO_WAKE, ctypes.byref(rng)) != 0:
            raise _fail(f"UFFDIO_WAKE at {addr:#x}+{size}")

    def read_faults(self, max_messages: int = 64) -> list[tuple[int, int]]:
        """(address, flags) of the page faults waiting to be read; [] if none. Other events
        are not enabled, so they are logged and skipped."""
        try:
            data = os.read(self.fd, MSG_SIZE * max_messages)
        except BlockingIOError:
            return []
        faults = []
        for event, _, _, _, flags, address, _ in MSG.iter_unpack(data):
            if event == EVENT_PAGEFAULT:
                faults.append((address, flags))
            else:
                log.warning("userfaultfd event %#x ignored", event)
        return faults


def probe() -> str | None:
    """None when this process can run a region (userfaultfd with write protection of anonymous
    memory), else why not: tests skip on it, tools print it."""
    try:
        uffd = Uffd()
    except OSError as exc:
        return str(exc)
    addr = 0
    try:
        addr = map_anonymous(PAGE)
        uffd.register(addr, PAGE)
    except OSError as exc:
        return str(exc)
    finally:
        uffd.close()
        if addr:
            unmap(addr, PAGE)
    return None
