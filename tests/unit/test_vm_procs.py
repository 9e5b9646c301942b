"""pid_alive: a running process is alive; an exited one is dead, reaped or not (zombie).

stop_pid: SIGTERM, SIGKILL when ignored, never a process that is no longer ours.
terminate: the same for our own child, returning its exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tmemh.procs import pid_alive, stop_pid, terminate


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


def _child(*script: str) -> subprocess.Popen[bytes]:
    """A Python child running ``script``; returns once it has run the script up to a sleep."""
    child = subprocess.Popen([sys.executable, "-c", "\n".join((*script, "print(flush=True)",
                                                               "time.sleep(30)"))],
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    child.stdout.readline()
    return child


def test_stop_pid_terminates_a_process_that_is_ours() -> None:
    child = _child("import time")
    try:
        assert stop_pid(child.pid, pid_alive, grace=5.0, poll=0.01)
        assert child.wait(5) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_stop_pid_kills_a_process_that_ignores_sigterm() -> None:
    child = _child("import signal, time", "signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    try:
        assert stop_pid(child.pid, pid_alive, grace=0.5, poll=0.01)
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


def test_stop_pid_leaves_a_process_that_is_not_ours_alone() -> None:
    child = _child("import time")
    try:
        asked: list[int] = []

        def not_ours(pid: int) -> bool:
            asked.append(pid)
            return False

        assert stop_pid(child.pid, not_ours, grace=0.5, poll=0.01)
        assert asked == [child.pid]
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_stop_pid_reports_a_process_that_does_not_go() -> None:
    child = _child("import signal, time", "signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    try:
        # is_ours stays True even after SIGKILL: the caller must hear that it did not stop.
        assert not stop_pid(child.pid, lambda pid: True, grace=0.2, poll=0.01)
    finally:
        child.kill()
        child.wait()


def test_terminate_sends_sigterm_and_returns_the_exit_code() -> None:
    child = _child("import sys, signal, time",
                   "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))")
    try:
        assert terminate(child, grace=5.0) == 7
    finally:
        child.kill()
        child.wait()


def test_terminate_kills_a_child_that_ignores_sigterm() -> None:
    child = _child("import signal, time", "signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    try:
        assert terminate(child, grace=0.2) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


def test_terminate_of_an_exited_child_returns_its_code() -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    child.wait()
    assert terminate(child, grace=0.1) == 3
