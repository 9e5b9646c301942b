"""What one guest stream may cost the daemon: the defaults live here, once.

The daemon's configuration (:mod:`.config`) offers each field as an option with this default;
the VM server (:mod:`.server`) enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLimits:
    """What one guest stream may cost the daemon (options of the daemon's configuration)."""

    stall_timeout: float = 10.0  # drop a frame still incomplete this long after it began
    max_connections: int = 256  # streams at once; more are closed at once
    hello_timeout: float = 30.0  # close a stream without a completed hello after this long
