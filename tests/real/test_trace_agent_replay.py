"""A trace recorded by the real agent (``tmem-agent run --trace``, a process of its own, on a
real ``tmemd serve``, driven by the test NBD client), then ``tmemd replay`` of it as a
subprocess: its counts match the agent's own counters, and its outcomes tmemd's answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.daemon import running_daemon
from support.hostagent import read_pipelined, write_pipelined
from support.replaycli import replay
from support.swapagent import agent_for

from tmem_agent.tools.pagecheck import guest_pages

pytestmark = pytest.mark.real

PAGE = 4096


@pytest.mark.parametrize("pages", [True, False], ids=["pages", "ops"])
def test_a_trace_of_the_agent_replays_to_its_own_counts(tmp_path: Path, pages: bool) -> None:
    trace = tmp_path / "agent.tmtrace"
    real = list(guest_pages(1500))
    noise = [os.urandom(PAGE) for _ in range(100)]  # refused by tmemd: compress poorly
    extra = ["--trace", str(trace)] + (["--trace-pages"] if pages else [])
    with running_daemon() as daemon, agent_for(daemon, tmp_path, *extra) as agent:
        nbd = agent.client()
        write_pipelined(nbd, 0, real, 32)
        write_pipelined(nbd, len(real), noise, 4)
        assert read_pipelined(nbd, 0, len(real), 8) == real
        nbd.trim(0, 200 * PAGE)
        status = agent.status()
        nbd.close()
    counters, recorded = status["counters"], status["trace"]
    assert recorded["dropped"] == 0 and recorded["state"] == "recording"
    report = replay(trace, timeout=600)
    assert report["warnings"] == [] and report["dropped_records"] == 0
    assert report["contents"] == ("recorded" if pages else "synthetic")
    ops = report["ops"]
    assert (ops["put"], ops["get"], ops["flush"]) == (counters["puts"], counters["gets"],
                                                      counters["flushes"])
    outcomes = report["outcomes"]
    assert outcomes["put"]["recorded"] == counters["puts_stored"]
    assert outcomes["get"]["recorded"] == counters["get_hits"]
    assert outcomes["put"]["compared"] == counters["puts"]
    if pages:  # the same pages in a store of the same rules: the same answers
        assert outcomes["put"]["differ"] == 0 and outcomes["get"]["differ"] == 0
    per_page = (trace.stat().st_size - 4096) / (ops["put"] + ops["get"] + ops["flush"])
    zbud = replay(trace, "--store", "zbud", timeout=600)
    print(f"trace {'with' if pages else 'without'} pages: {trace.stat().st_size} bytes, "
          f"{per_page:.0f} bytes per page op; replay {report['ops_per_s']} ops/s; frames at "
          f"peak: xvmalloc {report['frames_peak']}, zbud {zbud['frames_peak']}; puts refused: "
          f"{report['puts_refused']} and {zbud['puts_refused']}")
    assert zbud["ops"] == ops and zbud["store"] == "zbud"  # (zbud's largest page differs)
