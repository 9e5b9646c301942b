"""Processes a test left behind: found by a text on their command line (a VM's state
directory is unique to its test), killed by their PID, and the test failed for them."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tmemh.procs import pid_alive


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill_leftovers(text: str) -> list[int]:
    """Kill (SIGKILL, by PID) every live process naming ``text``; returns their PIDs."""
    leftovers = processes_naming(text)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    return leftovers


@contextmanager
def no_leftovers(state: Path) -> Iterator[None]:
    """After the block, also when it failed: what still names ``state`` is killed, and the
    test fails for it."""
    try:
        yield
    finally:
        leftovers = kill_leftovers(str(state))
        assert leftovers == [], f"processes left running: {leftovers}"
