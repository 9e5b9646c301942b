"""pid_alive: a running process is alive; an exited one is dead, reaped or not (zombie)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tmemh.procs import pid_alive


def test_running_zombie_and_reaped_processes() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(child.pid)
        os.kill(child.pid, 9)
        deadline = time.monotonic() + 5
        while pid_alive(child.pid) and time.monotonic() < deadline:  # not reaped: a zombie
            time.sleep(0.01)
        assert not pid_alive(child.pid)
        assert Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)


def test_a_pid_that_does_not_exist_is_dead() -> None:
    assert not pid_alive(2**22 + 1)  # above the kernel's largest PID
