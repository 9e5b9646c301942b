"""Facts about host processes read from ``/proc`` (Linux only)."""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    # The command name in parentheses may contain spaces and ")"; the state follows the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] != "Z"
