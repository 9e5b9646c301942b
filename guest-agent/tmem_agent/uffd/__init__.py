"""userfaultfd regions: memory of a process backed by tmem, faulted back in on touch.

:class:`Region` (in :mod:`.region`, with the contract its users keep) maps anonymous memory with
a budget of resident pages; its fault-handler thread (:mod:`.handler`) evicts with CLOCK to a
tmem pool (:mod:`.store`) and fills faulting pages again. :mod:`.kernel` has the ctypes bindings,
:mod:`.stats` the counters ``tmem-agent status`` shows.
"""

from .kernel import UffdError, UffdUnavailable, probe
from .region import PageLost, Region, RegionError
from .stats import UffdStats
from .store import PageStore, StoreError, TmemStore

__all__ = ["PageLost", "PageStore", "Region", "RegionError", "StoreError", "TmemStore",
           "UffdError", "UffdStats", "UffdUnavailable", "probe"]
