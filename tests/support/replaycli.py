"""``tmemd replay TRACE --json`` as a command of its own, from a test: its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def replay(trace: Path, *extra: str, timeout: float = 900) -> dict[str, Any]:
    """Replay ``trace`` (``extra``: more options); it must succeed."""
    done = subprocess.run([sys.executable, "-m", "tmemd.cli", "replay", str(trace), "--json",
                           *extra], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report
