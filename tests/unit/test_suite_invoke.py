"""How a workload phase's exit and report become the cell's outcome (a scripted guest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tmemh.ssh import CommandResult
from tmemh.suite.invoke import run_phase
from tmemh.suite.results import ERROR, FAIL, PASS
from tmemh.suite.workloads import Workload


class ScriptedGuest:
    """Answers every command with one exit code and one report line."""

    def __init__(self, exit_code: int, report: dict[str, Any]) -> None:
        self.exit_code, self.report = exit_code, report
        self.commands: list[str] = []

    def run(self, command: str, timeout: float | None = None,
            check: bool = False) -> CommandResult:
        self.commands.append(command)
        return CommandResult(command, self.exit_code, "progress\n" + json.dumps(self.report),
                             "")


def outcome(tmp_path: Path, exit_code: int, report: dict[str, Any]) -> tuple[str, str]:
    guest = ScriptedGuest(exit_code, report)
    result = run_phase(guest, Workload("anon", "anon"), "run", 1, tmp_path)  # type: ignore[arg-type]
    assert (tmp_path / "run.out").read_text().endswith(json.dumps(report))
    return result.status, result.reason


def test_a_verified_run_passes(tmp_path: Path) -> None:
    assert outcome(tmp_path, 0, {"verified": True}) == (PASS, "")


def test_bad_pages_are_named_in_the_reason(tmp_path: Path) -> None:
    status, reason = outcome(tmp_path, 1, {"verified": False, "verification": {
        "bad_pages": 3, "first_bad": [7, 9, 12, 40]}})
    assert status == FAIL and reason == ("verification failed: 3 bad pages "
                                         "(first: [7, 9, 12])")


def test_a_failed_userfaultfd_region_says_why(tmp_path: Path) -> None:
    """The region beside the swap path: its error (memhog gave no figures), else its
    wrong and lost pages; never the bare 'the workload says its data did not verify'."""
    broken = {"verified": False, "verification": {"bad_pages": 0}, "uffd": {
        "passed": False, "error": "memhog exited 2: tmemd: the daemon closed the stream"}}
    status, reason = outcome(tmp_path, 1, broken)
    assert status == FAIL and reason == ("verification failed: userfaultfd region: memhog "
                                         "exited 2: tmemd: the daemon closed the stream")
    wrong = {"verified": False, "uffd": {"passed": False, "mismatches": 2, "lost_pages": 1,
                                         "first_bad": [[5, "stale"], [9, "zero"], [11, "lost"],
                                                       [30, "zero"]]}}
    status, reason = outcome(tmp_path, 1, wrong)
    assert reason == ("verification failed: userfaultfd region: 2 wrong and 1 lost pages "
                      "(first: [[5, 'stale'], [9, 'zero'], [11, 'lost']])")


def test_an_exit_without_a_verdict_is_an_error_of_the_cell(tmp_path: Path) -> None:
    status, reason = outcome(tmp_path, 3, {"error": "ValueError: pages must be one of"})
    assert status == ERROR and reason == "run: ValueError: pages must be one of"
