"""Host processes: facts read from ``/proc`` (Linux only), stopping them, and showing their
command lines."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

PROC = Path("/proc")


def command_line(argv: Iterable[object]) -> str:
    """``argv`` as a user may paste it into a shell (``shlex.join``); for messages and logs."""
    return shlex.join(str(word) for word in argv)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    # The command name in parentheses may contain spaces and ")"; the state follows the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] != "Z"


def stop_pid(pid: int, is_ours: Callable[[int], bool], grace: float, poll: float) -> bool:
    """Stop a process that is not our child: SIGTERM, then SIGKILL if it outlives ``grace``.

    ``is_ours(pid)`` says whether ``pid`` still is the process meant (a PID can be reused);
    it is asked before each signal and while waiting, every ``poll`` seconds. Returns True
    once the process is gone (or no longer ours), False if it survives SIGKILL for ``grace``.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_ours(pid):
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not is_ours(pid):
                return True
            time.sleep(poll)
    return False


def terminate(proc: subprocess.Popen[bytes], grace: float) -> int:
    """Stop our child ``proc``: SIGTERM, SIGKILL if it outlives ``grace``; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
