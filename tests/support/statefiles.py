"""Helpers for the real state-file tests: distinct compressible pages, a daemon's state file
made the ordinary way, a start that must fail, and a snapshot of a directory to show that a
refused start touched nothing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from support.daemon import DaemonUnderTest, running_daemon
from tmem_agent.channel import wire
from tmemd.service.serve import READY_LINE

PERSIST = 1
BATCH = 256


def page(n: int) -> bytes:
    """A page that compresses well and differs for every ``n`` (never same-filled)."""
    return ((b"%012d|" % n) * (wire.PAGE_SIZE // 13 + 1))[: wire.PAGE_SIZE]


def keys(count: int, start: int = 0) -> list[wire.Key]:
    return [((n // 1000, 7, 0), n % 1000) for n in range(start, start + count)]


def put_pages(daemon: DaemonUnderTest, vm: str, boot: bytes, count: int,
              make: Callable[[int], bytes] = page, pool: int | None = None,
              start: int = 0) -> int:
    """Connect as ``vm``, put ``count`` pages (``make(n)`` at ``keys``) in a persistent pool
    (a new one unless ``pool`` is given); returns the pool id."""
    with daemon.transport() as agent:
        agent.hello(vm, boot, os.urandom(16))
        if pool is None:
            pool = agent.new_pool(PERSIST)
        handles = keys(count, start)
        for first in range(0, count, BATCH):
            batch = handles[first : first + BATCH]
            pages = [make(start + first + i) for i in range(len(batch))]
            assert all(agent.put_batch(pool, batch, pages))
    return pool


def get_pages(daemon: DaemonUnderTest, vm: str, boot: bytes, pool: int, count: int,
              expect: wire.HelloStatus = wire.HelloStatus.RESUMED) -> list[bytes | None]:
    """Connect as ``vm`` (the hello must answer ``expect``) and get ``count`` pages back."""
    with daemon.transport() as agent:
        assert agent.hello(vm, boot, os.urandom(16)).status is expect
        got: list[bytes | None] = []
        handles = keys(count)
        for first in range(0, count, BATCH):
            got.extend(agent.get_batch(pool, handles[first : first + BATCH]))
    return got


def make_state_file(workdir: Path, state: Path, vm: str = "saved-vm", count: int = 20
                    ) -> tuple[bytes, int]:
    """Run a daemon, store ``count`` pages for ``vm``, stop it: the bytes of the state file it
    wrote and the pool id. Sockets and log go to ``workdir``."""
    with running_daemon("--state-file", str(state), workdir=workdir) as daemon:
        pool = put_pages(daemon, vm, vm.encode().ljust(16, b"."), count)
        assert daemon.stop() == 0
    return state.read_bytes(), pool


def serve_fails(workdir: Path, *args: str, timeout: float = 30.0) -> tuple[int, str]:
    """Run ``tmemd serve`` that must fail to start: its exit code and its one error line.

    A start that hangs (a FIFO read) fails the test after ``timeout`` (the child is killed)."""
    command = [sys.executable, "-m", "tmemd.cli", "serve", "--socket", str(workdir / "vm.sock"),
               "--control", str(workdir / "control.sock"), *args]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert time.monotonic() - started < timeout
    assert READY_LINE not in done.stdout, done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("tmemd: error:")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr and "[Errno" not in done.stderr, done.stderr
    return done.returncode, errors[0]


Entry = tuple[str, int, int, bytes]


def snapshot(directory: Path, ignore: Sequence[str] = (".lock",)) -> dict[str, Entry]:
    """Every entry of ``directory``: kind, owner, mode and content (a link's target), except
    names ending in ``ignore`` (the daemon's lock file)."""
    found: dict[str, Entry] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.endswith(tuple(ignore)):
            continue
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(entry).encode()
        elif stat.S_ISREG(st.st_mode):
            content = entry.read_bytes()
        else:
            content = b""
        found[entry.name] = (stat.filemode(st.st_mode), st.st_uid, st.st_ino, content)
    return found


def wait_for(condition: Callable[[], object], timeout: float = 30.0, every: float = 0.01
             ) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {condition}")
        time.sleep(every)
