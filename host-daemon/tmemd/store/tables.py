"""Giving back the hash table of a dict that shrank.

CPython never shrinks a dict's table when keys are deleted; only an insertion that finds the
table full rebuilds it. A pool whose pages were flushed or evicted would keep the table sized for
its peak, memory no charge accounts for. So every place that deletes from a table the store keeps
per entry tests the new length inline (``n >= 8 and not n & (n - 1)``: a power of two, 8 and up)
and then calls :func:`compact`, which rebuilds the table when it is much bigger than a table in
normal use can be (a dict churned by inserts and deletes reaches about 120 bytes per entry, an
OrderedDict about 200). That costs an integer test or two per deletion, and a rebuild that the
deletions since the table's peak pay for. Between two checks a shrinking table may hold up to
twice the bound per entry.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

# Bytes per entry (beyond a fixed 1 KiB) above which a table is rebuilt: well above what
# normal use reaches (measured 120 for dicts and 200 for OrderedDicts at their worst).
DICT_BYTES_PER_ENTRY = 160
ORDERED_BYTES_PER_ENTRY = 256
SLACK_BYTES = 1024


def compact(table: dict[Any, Any]) -> None:
    """Rebuild ``table`` if its hash table is oversized for its length (see above)."""
    per_entry = ORDERED_BYTES_PER_ENTRY if type(table) is OrderedDict else DICT_BYTES_PER_ENTRY
    if sys.getsizeof(table) > per_entry * len(table) + SLACK_BYTES:
        log.debug("rebuilding a table of %d entries (%d bytes)", len(table), sys.getsizeof(table))
        rebuild(table)


def rebuild(table: dict[Any, Any]) -> None:
    """Rebuild ``table`` in place (same object, same order) with a table fit for its length."""
    items = table.copy()
    table.clear()
    table.update(items)
