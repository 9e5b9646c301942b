"""What keeps the swap server running while the guest is short of memory (docs/facts.md).

The server is on the guest's reclaim path: if it stalls in direct reclaim, swap I/O stops and
the guest hangs. So it is made a real-time task (it runs before whoever fills memory), its
memory is locked (no page of its own must be swapped to itself), its allocations do no I/O
(PR_SET_IO_FLUSHER), the OOM killer leaves it alone, and the kernel keeps a reserve
(``vm.min_free_kbytes``). glibc is told to keep freed memory for reuse rather than return it,
so that steady-state allocations need no new pages. Each step is best effort and reported:
a unit test runs the server without root.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

MCL_CURRENT = 1
MCL_FUTURE = 2
PR_SET_IO_FLUSHER = 57
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MIN_FREE_KBYTES = 16384
FIFO_PRIORITY = 10


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _step(name: str, ok: bool, detail: str, done: dict[str, str]) -> None:
    done[name] = "ok" if ok else detail
    if not ok:
        log.warning("hardening: %s: %s", name, detail)


def harden(priority: int = FIFO_PRIORITY, min_free_kbytes: int = MIN_FREE_KBYTES,
           lock_memory: bool = True) -> dict[str, str]:
    """Apply every protection; returns {step: "ok" or why not} (also logged)."""
    done: dict[str, str] = {}
    libc = _libc()
    # Keep freed heap memory for reuse; large buffers come from the heap, not fresh mmaps.
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20))
    _step("mallopt", ok, "mallopt refused", done)
    done.update(harden_thread(priority))
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
        _step("oom_score_adj", True, "", done)
    except OSError as exc:
        _step("oom_score_adj", False, str(exc), done)
    _step("min_free_kbytes", *_reserve(min_free_kbytes), done)
    if lock_memory:
        ok = libc.mlockall(MCL_CURRENT | MCL_FUTURE) == 0
        _step("mlockall", ok, os.strerror(ctypes.get_errno()), done)
    return done


def harden_thread(priority: int = FIFO_PRIORITY) -> dict[str, str]:
    """The per-thread protections, for the calling thread: SCHED_FIFO and PR_SET_IO_FLUSHER
    (its allocations then never wait for I/O, which could be swap I/O waiting for this very
    process). Every thread of the swap path needs them, not only the main one."""
    done: dict[str, str] = {}
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                              os.sched_param(priority))
        _step("sched_fifo", True, "", done)
    except OSError as exc:
        _step("sched_fifo", False, str(exc), done)
    ok = _libc().prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) == 0
    _step("io_flusher", ok, os.strerror(ctypes.get_errno()), done)
    return done


def _reserve(kbytes: int) -> tuple[bool, str]:
    """Raise vm.min_free_kbytes to at least ``kbytes`` (the image's init already does)."""
    path = "/proc/sys/vm/min_free_kbytes"
    try:
        with open(path) as f:
            now = int(f.read())
        if now >= kbytes:
            return True, ""
        with open(path, "w") as f:
            f.write(str(kbytes))
        return True, ""
    except (OSError, ValueError) as exc:
        return False, str(exc)


def locked_kib() -> int:
    """This process's locked memory (VmLck), for status."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmLck:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
