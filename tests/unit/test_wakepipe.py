"""The self-pipe the agent's poll loops are woken with: wake-ups coalesce, none is lost."""

from __future__ import annotations

import select
import threading
from collections import deque

from tmem_agent.wakepipe import WakePipe


def readable(pipe: WakePipe, timeout: float = 0.0) -> bool:
    return bool(select.select([pipe.fileno()], [], [], timeout)[0])


def test_wakeups_coalesce_and_a_drain_empties_the_pipe() -> None:
    pipe = WakePipe()
    try:
        assert not readable(pipe)
        for _ in range(100):
            pipe.wake()
        assert readable(pipe)
        pipe.drain()
        assert not readable(pipe)
        pipe.wake()  # after a drain, a wake-up is written again
        assert readable(pipe)
    finally:
        pipe.close()
    pipe.wake()  # closed: nothing happens


def test_no_work_is_left_behind_by_a_coalesced_wakeup() -> None:
    """Producers append and wake; the consumer drains, then takes everything. Whatever the
    interleaving, every item is taken without waiting for a wake-up that never comes."""
    pipe, items, taken = WakePipe(), deque[int](), []
    total, producers = 20000, 4

    def produce(base: int) -> None:
        for i in range(total // producers):
            items.append(base + i)
            pipe.wake()

    threads = [threading.Thread(target=produce, args=(n * total,)) for n in range(producers)]
    for thread in threads:
        thread.start()
    try:
        while len(taken) < total:
            assert readable(pipe, 5.0), f"stuck with {len(items)} items waiting"
            pipe.drain()
            while items:
                taken.append(items.popleft())
    finally:
        for thread in threads:
            thread.join()
        pipe.close()
    assert len(set(taken)) == total
