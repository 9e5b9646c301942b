"""write_atomic: the file is replaced whole; a failed write leaves the old file and no litter.

flocked: an exclusive lock; whoever has to wait is told once, then gets the lock on release.
"""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest

from tmemh.files import flocked, write_atomic


def test_write_atomic_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_failed_write_atomic_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # a file cannot be renamed over a directory
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomic(target, b"data")
    assert (target / "inside").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_flocked_does_not_call_on_wait_when_the_lock_is_free(tmp_path: Path) -> None:
    waits: list[str] = []
    with flocked(tmp_path / "lock", on_wait=lambda: waits.append("waited")):
        with open(tmp_path / "lock") as other:  # held: another open file cannot take it
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert waits == []
    with open(tmp_path / "lock") as other:  # released on the way out
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_flocked_calls_on_wait_then_blocks_until_released(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    waiting = threading.Event()
    acquired = threading.Event()

    def second_holder() -> None:
        with flocked(path, on_wait=waiting.set):
            acquired.set()

    with open(path, "a") as first:
        fcntl.flock(first, fcntl.LOCK_EX)
        thread = threading.Thread(target=second_holder)
        thread.start()
        try:
            assert waiting.wait(5)
            assert not acquired.wait(0.2)
        finally:
            fcntl.flock(first, fcntl.LOCK_UN)
            thread.join(5)
    assert acquired.is_set()
