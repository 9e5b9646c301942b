"""write_atomic: the file is replaced whole; a failed write leaves the old file and no litter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemh.files import write_atomic


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
