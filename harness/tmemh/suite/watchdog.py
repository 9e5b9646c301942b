"""A watchdog for the measured run: a guest that stops answering is given up on.

Under memory pressure a guest can livelock (zram holding most of the memory it would need to
make progress, for instance): the workload neither finishes nor dies, and the run's own
timeout is long. While the workload runs, the watchdog asks the guest for a trivial command on
a channel of its own every ``interval`` seconds (each probe may take as long); after
``misses`` probes in a row without an answer it calls ``on_hang`` (the cell dumps the blocked
tasks to the console and drops the connection, which ends the workload's command with an
error) and stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 60.0
PROBE_MISSES = 3


class GuestWatchdog(threading.Thread):
    """Calls ``on_hang`` once ``probe`` has failed ``misses`` times in a row."""

    def __init__(self, probe: Callable[[], bool], on_hang: Callable[[], None],
                 interval: float = PROBE_INTERVAL_S, misses: int = PROBE_MISSES) -> None:
        super().__init__(name="guest-watchdog", daemon=True)
        self.probe = probe
        self.on_hang = on_hang
        self.interval = interval
        self.misses = misses
        self.fired = False
        self.silent_s = 0.0
        self._halt = threading.Event()
        self._pending: threading.Thread | None = None

    def run(self) -> None:
        missed = 0
        first_miss = 0.0
        while not self._halt.wait(self.interval):
            started = time.monotonic()
            answered = self._probe()
            if self._halt.is_set():
                return
            if answered:
                missed = 0
                continue
            missed += 1
            first_miss = first_miss if missed > 1 else started - self.interval
            if missed >= self.misses:
                self.fired = True
                self.silent_s = time.monotonic() - first_miss
                logger.warning("the guest has not answered for %.0f s; giving up on it",
                               self.silent_s)
                self.on_hang()
                return

    def _probe(self) -> bool:
        """One probe, in a thread of its own so that a probe stuck in the SSH layer (opening
        a channel to a guest that never answers) is a miss after ``interval`` seconds; while
        an earlier probe is still stuck, no new one starts."""
        if self._pending is not None and self._pending.is_alive():
            return False
        answer: list[bool] = []

        def ask() -> None:
            try:
                answer.append(bool(self.probe()))
            except Exception as exc:  # any failure to answer is a miss
                logger.debug("watchdog probe failed: %s", exc)

        self._pending = threading.Thread(target=ask, name="guest-probe", daemon=True)
        self._pending.start()
        self._pending.join(self.interval)
        return answer == [True]

    def stop(self) -> None:
        """Stop probing (a probe under way is left to finish on its own)."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5.0)
