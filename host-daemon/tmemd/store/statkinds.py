"""Which statistics only ever grow: declared where each statistic is defined.

A counter of events (puts, evictions) only grows; a gauge (pages held, bytes in use) goes up and
down. Exporters such as the Prometheus endpoint need to know which is which, and the answer
belongs to the statistic's own definition, not to a list kept somewhere else:
- dataclass fields declare it with :func:`cumulative` and are read back with
  :func:`cumulative_fields`;
- the page stores name theirs in a ``CUMULATIVE_STATS`` set beside their ``stats()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

CUMULATIVE = "cumulative"


def cumulative(default: int = 0) -> Any:
    """A dataclass field counting events: it only ever grows."""
    return dataclasses.field(default=default, metadata={CUMULATIVE: True})


def cumulative_fields(cls: type) -> frozenset[str]:
    """The names of ``cls``'s fields declared with :func:`cumulative`."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get(CUMULATIVE))
