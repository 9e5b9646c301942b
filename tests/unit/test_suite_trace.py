"""``[suite] trace``: the option, the kernel words that make the agent record, and fetching
the trace into the cell's directory (a fake guest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_suite_configs import shell

from tmem_agent.trace import options
from tmemh.suite import tracing
from tmemh.suite.errors import SuiteError
from tmemh.suite.results import CellResult
from tmemh.suite.suitefile import parse_suite
from tmemh.vm import VMSpec


def suite(**head: object) -> dict[str, object]:
    return {"suite": {"workloads": ["anon"], "configurations": ["disk-swap", "tmem-swap"],
                      **head}}


def test_trace_is_off_by_default_and_saved_in_the_resolved_suite() -> None:
    assert parse_suite(suite()).trace == "off"
    traced = parse_suite(suite(trace="ops"))
    assert traced.describe()["trace"] == "ops"
    assert {c.trace for c in traced.cells()} == {"ops"}


@pytest.mark.parametrize("value", ["on", True, 1])
def test_only_the_known_modes_are_taken(value: object) -> None:
    with pytest.raises(SuiteError, match="trace must be one of off, ops, pages"):
        parse_suite(suite(trace=value))


def test_the_kernel_words_are_the_agents() -> None:
    assert (tracing.CMDLINE_TRACE, tracing.CMDLINE_PAGES) == (options.CMDLINE_TRACE,
                                                              options.CMDLINE_PAGES)
    spec = VMSpec(name="c", memory_mib=256, kernel_args=("quiet",))
    assert tracing.vm_spec(spec, "off") is spec
    assert tracing.vm_spec(spec, "ops").kernel_args == (
        "quiet", f"tmem.trace={tracing.GUEST_TRACE}")
    assert tracing.vm_spec(spec, "pages").kernel_args[-1] == "tmem.trace_pages=1"


def test_the_trace_is_fetched_once_the_agent_has_written_it(tmp_path: Path) -> None:
    status = {"trace": {"state": "recording", "pending_bytes": 0, "records": 10}}
    guest, fake = shell(tmp_path, [("tmem-agent status", 0, json.dumps(status))])
    assert tracing.fetch(guest, tmp_path) == tracing.TRACE_FILE
    assert any(tracing.GUEST_TRACE in c for c in fake.commands)
    assert json.loads((tmp_path / "trace-status.json").read_text())["records"] == 10


def test_a_status_in_hand_is_not_asked_for_again_unless_the_trace_is_pending(
        tmp_path: Path) -> None:
    done = json.dumps({"trace": {"state": "recording", "pending_bytes": 0, "records": 3}})
    guest, fake = shell(tmp_path, [("tmem-agent status", 0, done)])
    assert tracing.fetch(guest, tmp_path, done) == tracing.TRACE_FILE
    assert not any("tmem-agent status" in c for c in fake.commands)
    pending = json.dumps({"trace": {"state": "recording", "pending_bytes": 4096}})
    guest, fake = shell(tmp_path, [("tmem-agent status", 0, done)])
    assert tracing.fetch(guest, tmp_path, pending) == tracing.TRACE_FILE
    assert sum("tmem-agent status" in c for c in fake.commands) == 1  # once more, written


def test_no_trace_in_the_guest_is_none(tmp_path: Path) -> None:
    guest, _ = shell(tmp_path, [("tmem-agent status", 0, "{}"), ("test -f", 1, "")])
    assert tracing.fetch(guest, tmp_path) is None


def test_the_cell_record_names_the_trace() -> None:
    result = CellResult("c", 0, "anon", "tmem-swap", "none", "256M", 1, True,
                        trace="cells/c/trace.tmtrace")
    assert CellResult.from_json(result.to_json()).trace == "cells/c/trace.tmtrace"
