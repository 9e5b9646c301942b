"""The run's watchdog: it gives up on a guest only after several missed probes in a row."""

from __future__ import annotations

import time

from tmemh.suite.watchdog import GuestWatchdog


def test_a_guest_that_stops_answering_is_given_up_on_once() -> None:
    answers = iter([True, False, True, False, False, False, False])
    hangs: list[float] = []
    watchdog = GuestWatchdog(lambda: next(answers), lambda: hangs.append(time.monotonic()),
                             interval=0.02, misses=3)
    watchdog.start()
    watchdog.join(timeout=5)
    assert watchdog.fired and len(hangs) == 1 and not watchdog.is_alive()
    assert watchdog.silent_s >= 0.05


def test_a_probe_that_raises_is_a_miss_and_stop_ends_it_quietly() -> None:
    def broken() -> bool:
        raise OSError("no route")

    hangs: list[bool] = []
    watchdog = GuestWatchdog(broken, lambda: hangs.append(True), interval=0.01, misses=2)
    watchdog.start()
    watchdog.join(timeout=5)
    assert hangs == [True]
    calm = GuestWatchdog(lambda: True, lambda: hangs.append(False), interval=0.01)
    calm.start()
    time.sleep(0.1)
    calm.stop()
    assert not calm.fired and not calm.is_alive() and hangs == [True]


def test_a_probe_stuck_forever_counts_as_missed() -> None:
    import threading

    release = threading.Event()
    hangs: list[bool] = []

    def stuck() -> bool:
        release.wait(10)
        return True

    watchdog = GuestWatchdog(stuck, lambda: hangs.append(True), interval=0.05, misses=3)
    watchdog.start()
    watchdog.join(timeout=5)
    release.set()
    assert watchdog.fired and hangs == [True]
