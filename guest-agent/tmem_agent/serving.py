"""Running a long-lived agent process: start it, run its loop until SIGTERM or SIGINT, close it;
say it is ready (the ready file and the marker line the guest's init waits for) or failed.

Shared by ``tmem-agent run`` (the swap agent) and ``tmem-agent cache`` (the block cache alone).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from typing import Any, Protocol

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


def announce_ready(ready_path: str, marker: str, info: dict[str, Any]) -> None:
    """Write ``info`` to the ready file and print ``MARKER key=value ...`` on stdout."""
    with open(ready_path, "w") as f:
        json.dump(info, f)
    print(f"{marker} " + " ".join(f"{k}={v}" for k, v in info.items()), flush=True)


def announce_failure(marker: str, message: str) -> None:
    """Log ``message`` and print ``MARKER message`` on stdout."""
    log.error("%s", message)
    print(f"{marker} {message}", flush=True)
