"""``results.json``: what a run found, in a versioned schema.

Schema ``tmemh.results/1``::

    {"schema": "tmemh.results/1", "run": {id, suite, started, finished, status,
     interrupted, counts, host, options, not_run}, "cells": [cell, ...]}

A cell: ``id``, ``workload``, ``configuration``, ``throttle``, ``shape``, ``repetition``,
``collectors``, ``status`` (PASS: ran and every byte verified; FAIL: ran and a verification
failed; ERROR: could not run or finish, e.g. the VM did not boot, the workload was killed or
timed out; SKIP: the configuration cannot run here, with the reason), ``reason``,
``started``, ``duration_s`` (the whole cell on the host's clock), ``metrics`` (numbers for
tables and comparisons: ``time_s`` is the workload's own run time, ``disk_read_bytes`` and
``disk_write_bytes`` the guest disk's traffic during the run, swap pages, collector cost,
...), ``workload`` (the guest workload's own report), ``prepared`` (what the configuration
set up) and ``files`` (paths relative to the run directory). The file is rewritten after
every cell, so an interrupted run keeps what finished.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tmemh.files import write_atomic

SCHEMA = "tmemh.results/1"
RESULTS_FILE = "results.json"
PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"
STATUSES = (PASS, FAIL, ERROR, SKIP)
# A run's status is its worst cell's: a wrong result outranks a broken run.
SEVERITY = {FAIL: 3, ERROR: 2, PASS: 1, SKIP: 0}


class ResultsError(ValueError):
    """A results file that cannot be read or is of an unknown schema."""


@dataclass
class CellResult:
    id: str
    index: int
    workload: str
    configuration: str
    throttle: str
    shape: str
    repetition: int
    collectors: bool
    status: str = ERROR
    reason: str = ""
    started: str = ""
    duration_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    workload_report: dict[str, Any] = field(default_factory=dict)
    prepared: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    trace: str | None = None  # the agent's trace, relative to the run directory (tmemd replay)

    @property
    def group(self) -> tuple[str, str, str, str, bool]:
        return (self.workload, self.configuration, self.throttle, self.shape, self.collectors)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellResult:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunResult:
    id: str
    suite: str
    started: str
    finished: str = ""
    interrupted: bool = False
    host: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    cells: list[CellResult] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {status: sum(1 for c in self.cells if c.status == status) for status in STATUSES}

    @property
    def status(self) -> str:
        if not self.cells:
            return ERROR if self.interrupted else SKIP
        return max((c.status for c in self.cells), key=SEVERITY.__getitem__)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA,
                "run": {"id": self.id, "suite": self.suite, "started": self.started,
                        "finished": self.finished, "status": self.status,
                        "interrupted": self.interrupted, "counts": self.counts,
                        "host": self.host, "options": self.options, "not_run": self.not_run},
                "cells": [c.to_json() for c in self.cells]}

    def save(self, run_dir: Path) -> None:
        write_atomic(run_dir / RESULTS_FILE,
                     (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode())


def load_results(run_dir: Path) -> RunResult:
    """The results of the run in ``run_dir``."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ResultsError(f"{path} is not JSON: {exc}") from None
    if data.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: unknown schema {data.get('schema')!r} (expected {SCHEMA})")
    run = data["run"]
    return RunResult(id=run["id"], suite=run["suite"], started=run["started"],
                     finished=run.get("finished", ""), interrupted=run.get("interrupted", False),
                     host=run.get("host", {}), options=run.get("options", {}),
                     cells=[CellResult.from_json(c) for c in data.get("cells", [])],
                     not_run=run.get("not_run", []))
