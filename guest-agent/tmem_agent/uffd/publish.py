"""Counters of userfaultfd regions made visible to ``tmem-agent status``.

Regions live in the processes that use them (``tmem-agent memhog``, or a program using the
library), not in the serving agent. Each such process publishes its :class:`UffdStats` as
``<run dir>/uffd/<pid>.json``: rewritten every :data:`PUBLISH_INTERVAL_S` by a thread and once
more when the process is done, always atomically (a temporary file renamed over the old one),
so a reader never sees half a document. ``tmem-agent status`` gathers the files under
``"uffd"``, marking the processes that have ended; the run directory is on tmpfs, so the files
go with the boot.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from types import TracebackType
from typing import Any

from ..jsonfile import write_json
from .stats import UffdStats

log = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 1.0
SUBDIR = "uffd"
TOTALLED = ("faults", "copies", "zero_fills", "gets", "get_hits", "get_misses", "puts",
            "puts_stored", "puts_refused", "evictions", "lost_pages", "tmem_errors")


class StatsPublisher:
    """``with StatsPublisher(stats, run_dir):`` publishes ``stats`` while the block runs."""

    def __init__(self, stats: UffdStats, run_dir: str, command: str = "",
                 interval: float = PUBLISH_INTERVAL_S) -> None:
        self.stats = stats
        self.directory = os.path.join(run_dir, SUBDIR)
        self.path = os.path.join(self.directory, f"{os.getpid()}.json")
        self.command = command
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.enabled = True

    def __enter__(self) -> StatsPublisher:
        try:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
        except OSError as exc:  # e.g. not root: the work goes on, unpublished
            log.warning("uffd counters not published (%s): %s", self.directory, exc)
            self.enabled = False
            return self
        self.publish(running=True)
        self._thread = threading.Thread(target=self._run, name="uffd-publish", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.enabled:
            self.publish(running=False)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish(running=True)

    def publish(self, running: bool) -> None:
        document = {"pid": os.getpid(), "command": self.command, "running": running,
                    **self.stats.snapshot()}
        try:
            write_json(self.path, document)
        except OSError as exc:
            log.warning("cannot publish uffd counters to %s: %s", self.path, exc)


def published(run_dir: str) -> dict[str, Any]:
    """Every process's published counters, and their sums; a process that ended without
    saying so (killed) shows ``running: false``."""
    directory = os.path.join(run_dir, SUBDIR)
    processes = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name)) as source:
                document = json.load(source)
        except (OSError, ValueError):
            continue
        if document.get("running") and not _alive(int(document.get("pid", 0))):
            document["running"] = False
        processes.append(document)
    totals = dict.fromkeys(TOTALLED, 0)
    for document in processes:
        counters = document.get("counters", {})
        for key in TOTALLED:
            totals[key] += int(counters.get(key, 0))
    return {"processes": processes, "totals": totals}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
