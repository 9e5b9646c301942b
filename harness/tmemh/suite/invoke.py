"""One phase of a workload in the guest: the command, its output kept, its outcome judged.

The guest program prints its report as the last line of stdout and exits 0 (done and
verified), 1 (a verification failed), 2 (bad arguments) or 3 (it broke). Anything else (a
signal, most often the OOM killer; a timeout; a lost connection) is an error of the cell, with
the reason in one line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tmemh.ssh import SSHCommandTimeout, SSHConnectError

from .guestcode import WORKDIR, python_command
from .guestshell import GuestShell
from .results import ERROR, FAIL, PASS
from .workloads import Workload

EXIT_VERIFY_FAILED = 1
OOM_MARKERS = ("Out of memory: Killed process", "oom-kill:")


@dataclass
class PhaseOutcome:
    status: str
    reason: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    host_s: float = 0.0
    started: float = 0.0  # host epoch


def workload_command(workload: Workload, phase: str, seed: int) -> str:
    return python_command("main", phase, workload.kind, "--workdir", WORKDIR, "--seed",
                          str(seed), "--params", json.dumps(workload.params, sort_keys=True))


def run_phase(guest: GuestShell, workload: Workload, phase: str, seed: int,
              cell_dir: Path) -> PhaseOutcome:
    """Run ``phase`` (setup or run) of ``workload``; its stdout and stderr go to
    ``cell_dir/PHASE.out`` and ``PHASE.err``."""
    timeout = workload.setup_timeout if phase == "setup" else workload.timeout
    command = workload_command(workload, phase, seed)
    started, clock = time.time(), time.monotonic()
    try:
        result = guest.run(command, timeout=timeout, check=False)
    except SSHCommandTimeout:
        return PhaseOutcome(ERROR, f"{phase} timed out after {timeout:.0f} s",
                            host_s=time.monotonic() - clock, started=started)
    except SSHConnectError as exc:
        return PhaseOutcome(ERROR, f"{phase}: lost the guest ({exc})",
                            host_s=time.monotonic() - clock, started=started)
    host_s = time.monotonic() - clock
    (cell_dir / f"{phase}.out").write_text(result.stdout)
    (cell_dir / f"{phase}.err").write_text(result.stderr)
    report = _last_json(result.stdout)
    outcome = PhaseOutcome(PASS, report=report, host_s=host_s, started=started)
    if result.exit_code == 0:
        return outcome
    if result.exit_code == EXIT_VERIFY_FAILED and phase == "run" and "verified" in report:
        outcome.status, outcome.reason = FAIL, "verification failed: " + _bad_data(report)
        return outcome
    outcome.status = ERROR
    if "error" in report:
        outcome.reason = f"{phase}: {report['error']}"
    else:
        killed = _oom_kill(guest)
        outcome.reason = (f"{phase} exited with {result.exit_code}"
                          + (f"; the OOM killer struck: {killed}" if killed else "")
                          + (f": {result.stderr.strip().splitlines()[-1][:200]}"
                             if result.stderr.strip() and not killed else ""))
    return outcome


def _last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _bad_data(report: dict[str, Any]) -> str:
    """What did not verify, in a few words."""
    parts = []
    verification = report.get("verification", {})
    for key in ("bad_files", "bad_pages", "bad_reads"):
        if verification.get(key):
            first = verification.get("first_bad", [])[:3]
            parts.append(f"{verification[key]} {key.replace('_', ' ')} (first: {first})")
    ballast = report.get("ballast") or {}
    if ballast.get("bad_pages"):
        parts.append(f"{ballast['bad_pages']} bad ballast pages "
                     f"(first: {ballast.get('first_bad', [])[:3]})")
    if ballast.get("error"):
        parts.append(f"ballast: {ballast['error']}")
    uffd = report.get("uffd") or {}
    if uffd.get("passed") is False:
        parts.append("userfaultfd region: " + (
            uffd.get("error") or f"{uffd.get('mismatches')} wrong and {uffd.get('lost_pages')}"
                                 f" lost pages (first: {(uffd.get('first_bad') or [])[:3]})"))
    return "; ".join(parts) or "the workload says its data did not verify"


def _oom_kill(guest: GuestShell) -> str:
    """The guest kernel's last OOM kill message, if there was one."""
    try:
        log = guest.run("dmesg | tail -n 200", check=False, timeout=60).stdout
    except (SSHCommandTimeout, SSHConnectError):
        return ""
    lines = [line for line in log.splitlines() if any(m in line for m in OOM_MARKERS)]
    return lines[-1].split("]", 1)[-1].strip()[:160] if lines else ""
