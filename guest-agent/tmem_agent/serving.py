"""Running a long-lived agent process: start it, run its loop until SIGTERM or SIGINT, close it.

Shared by ``tmem-agent run`` (the swap agent) and ``tmem-agent cache`` (the block cache alone).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Protocol

from .swap.loop import BlockServer

log = logging.getLogger(__name__)


class Served(Protocol):
    """What :func:`serve` runs: an agent with a loop (``server``)."""

    failed: bool

    @property
    def server(self) -> BlockServer: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


def serve(agent: Served) -> int:
    """Start ``agent`` and run its loop until SIGTERM or SIGINT (a signal stops the loop, in
    the main thread only); close it whatever happens; 1 if it failed."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: agent.server.stop())
    started = time.monotonic()
    try:
        agent.start()
        agent.server.run()
    finally:
        log.info("stopping after %.0f s", time.monotonic() - started)
        agent.close()
    return 1 if agent.failed else 0
