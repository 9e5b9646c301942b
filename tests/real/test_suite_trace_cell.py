"""One ``tmem-swap`` cell of a suite with ``trace = "ops"`` on a real VM: the agent records a
trace in the guest, the harness fetches it into the cell's directory and names it in the
cell's record, and ``tmemd replay`` replays it (auto against zbud for every pool)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.replaycli import replay
from support.suiterun import only_cell, run_dirs, run_suite

from tmemh.image.manifest import ImageManifest

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

SUITE = """
[suite]
name = "trace-cell"
workloads = ["anon"]
configurations = ["tmem-swap"]
trace = "ops"

[vm]
memory = "192M"

[workload.anon]
scale = 1.2
"""


def test_a_traced_tmem_swap_cell_fetches_a_trace_that_replays(guest_image: ImageManifest,
                                                              tmp_path: Path) -> None:
    (code,) = run_suite(SUITE, tmp_path, guest_image)
    (run_dir,) = run_dirs(tmp_path)
    cell = only_cell(run_dir)
    assert code == 0 and cell["status"] == "PASS", cell.get("reason")
    assert cell["trace"] == f"cells/{cell['id']}/trace.tmtrace"
    trace = run_dir / cell["trace"]
    recorded = json.loads((trace.parent / "trace-status.json").read_text())
    counters = json.loads((trace.parent / "agent-status.json").read_text())["counters"]
    assert recorded["dropped"] == 0 and recorded["state"] == "recording"
    auto = replay(trace)
    zbud = replay(trace, "--store", "zbud")
    print(json.dumps({"trace_bytes": trace.stat().st_size, "records": auto["records"],
                      "ops": auto["ops"], "replay_ops_per_s": auto["ops_per_s"],
                      "mean_op_ns": auto["mean_op_ns"],
                      "synthetic_estimate_error_bytes": auto["synthetic_estimate_error_bytes"],
                      **{f"{name}_{key}": report[key] for name, report in
                         (("xvmalloc", auto), ("zbud", zbud))
                         for key in ("pages_peak", "frames_peak", "compression_ratio_peak",
                                     "puts_refused")}}))
    assert auto["warnings"] == [] and auto["contents"] == "synthetic"
    assert auto["ops"]["put"] >= counters["puts"] > 1000  # the trace went on a little longer
    assert auto["outcomes"]["put"]["recorded"] >= counters["puts_stored"]
    assert auto["outcomes"]["get"]["recorded"] >= counters["get_hits"]
    assert zbud["ops"] == auto["ops"] and zbud["frames_peak"] > 0
