"""A small suite file run on real VMs from a test: ``tmemh run`` in process, into the test's
own directories, with nothing left running afterwards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.leftovers import no_leftovers
from tmemh.cli import main
from tmemh.image.manifest import ImageManifest


def run_suite(text: str, root: Path, image: ImageManifest, times: int = 1) -> list[int]:
    """Write the suite ``text`` under ``root`` and run it ``times`` times (results in
    ``root / "results"``, VMs under ``root / "vms"``); the exit codes."""
    state, suite = root / "vms", root / "suite.toml"
    suite.write_text(text)
    with no_leftovers(state):
        return [main(["run", str(suite), "--results", str(root / "results"), "--state-dir",
                      str(state), "--image", str(image.directory)]) for _ in range(times)]


def run_dirs(root: Path) -> list[Path]:
    """The run directories :func:`run_suite` made, oldest first."""
    return sorted(p for p in (root / "results").iterdir() if p.is_dir())


def only_cell(run_dir: Path) -> dict[str, Any]:
    """The one cell of a run of a one-cell suite, as results.json records it."""
    (cell,) = json.loads((run_dir / "results.json").read_text())["cells"]
    result: dict[str, Any] = cell
    return result
