"""What every workload shares: its context (work directory, seed, parameters, memory size),
the ballast that makes anonymous memory compete with the page cache, and the report shape.

A workload has two phases. ``setup`` makes its input (not timed; the host has not yet
throttled the disk); ``run`` is the measured part and returns a report with its own time,
bytes and verification. Parameters arrive as JSON from the host; sizes are fractions of the
guest's memory, so one suite scales with the VM.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import sysinfo
from .datagen import PAGE, ContentPool
from .memory import Ballast, ballast_pages

Report = dict[str, Any]


@dataclass
class Context:
    workdir: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    mem_total: int = 0

    _pool: ContentPool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.mem_total:
            self.mem_total = sysinfo.mem_total_bytes()

    def pool(self) -> ContentPool:
        """The seed's content pool, made on first use (about 2 s under TCG: workloads make
        it before their timed part starts)."""
        if self._pool is None:
            self._pool = ContentPool(self.seed)
        return self._pool

    def number(self, name: str, default: float) -> float:
        value = self.params.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"parameter {name} must be a number >= 0, not {value!r}")
        return float(value)

    def scaled_bytes(self, name: str, default: float) -> int:
        """``params[name]`` times the guest's memory, in whole pages."""
        return int(self.number(name, default) * self.mem_total) // PAGE * PAGE

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def save_state(self, name: str, state: Any) -> None:
        with open(self.path(name), "w") as f:
            json.dump(state, f)

    def load_state(self, name: str) -> Any:
        with open(self.path(name)) as f:
            return json.load(f)


def timed(step: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    value = step()
    return value, time.monotonic() - started


def run_with_ballast(ctx: Context, body: Callable[[], Report]) -> Report:
    """Run ``body`` while a ballast holds ``ballast`` x the available memory (parameter,
    default 0.9) and touches ``ballast_touch_mib_s`` MiB/s of it (default 4). The ballast's
    fill and its final verification are phases of the run (inside :func:`measured`)."""
    fraction = ctx.number("ballast", 0.9)
    pages = ballast_pages(sysinfo.mem_available_bytes(), fraction)
    if pages == 0:
        return body()
    touch = int(ctx.number("ballast_touch_mib_s", 4) * (1 << 20)) // PAGE
    ballast = Ballast(ctx.pool(), pages, touch, ctx.seed)
    ballast.fill()
    ballast.start()
    try:
        report = body()
    finally:
        held = ballast.finish()
    report["ballast"] = held
    report["verified"] = bool(report.get("verified")) and held["bad_pages"] == 0 \
        and held["error"] is None
    report["phases"]["ballast_fill_s"] = held["fill_s"]
    report["phases"]["ballast_verify_s"] = held["verify_s"]
    return report


def measured(name: str, ctx: Context, body: Callable[[], Report]) -> Report:
    """The run phase's report: the body's own fields plus time, swap counters and the
    start and end on the guest's clock (for lining up the samples)."""
    before = sysinfo.vmstat()
    started_epoch = time.time()
    started = time.monotonic()
    report = body()
    report["time_s"] = round(time.monotonic() - started, 3)
    report.update(workload=name, seed=ctx.seed, mem_total=ctx.mem_total,
                  started=started_epoch, finished=time.time(),
                  vmstat=sysinfo.vmstat_delta(before, sysinfo.vmstat()))
    return report
