"""How few frames could hold a set of compressed pages: the bounds a page store is judged by.

zbud and xvmalloc never let a stored page cross a 4 KiB frame boundary, so the sum of the
compressed sizes (the "compressed-bytes ideal") is not a bound any of them can meet: when
most pages compress to more than half a frame, most frames hold one page and a gap. The right
yardstick is bin packing: items (blocks) that must each fit inside one bin (frame).

- ``packing_lower_bound``: no packing can use fewer frames. The larger of the volume bound
  ``ceil(sum / capacity)`` and the Martello-Toth bound L2, which also counts the items too big
  to share a frame with each other. It may be unreachable (bin packing is NP-hard and L2 is
  only a bound), so it is reported, not used as a target.
- ``first_fit_decreasing``: an actual packing, offline (all blocks known, largest first). It is
  always achievable, typically within a few per cent of the optimum, so "host frames within
  5 % of first-fit-decreasing" is a target a good allocator can really meet.
- ``optimal_zbud_frames``: for zbud (at most two buddies per frame) the optimum is known
  exactly: an optimal pairing.

Block footprints follow the stores: an xvmalloc block takes a 4-byte header plus its payload
rounded up to 4 bytes, at least 32 (``xvmalloc.block_size_for``), in a 4096-byte frame; a zbud
buddy takes whole 64-byte chunks, 63 of them usable per frame.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from .. import PAGE_SIZE
from ..store.xvmalloc import HEADER_SIZE, block_size_for
from ..store.zbud import CHUNK_SIZE, USABLE_CHUNKS

log = logging.getLogger(__name__)


def xvmalloc_block_bytes(length: int) -> int:
    """Bytes of its frame an xvmalloc block holding ``length`` bytes takes (header included)."""
    return HEADER_SIZE + block_size_for(length)


def _checked(sizes: Iterable[int], capacity: int) -> list[int]:
    items = list(sizes)
    if capacity <= 0:
        raise ValueError(f"bin capacity must be positive, got {capacity}")
    for size in items:
        if not 0 < size <= capacity:
            raise ValueError(f"item of size {size} does not fit a bin of {capacity}")
    return items


def volume_bound(sizes: Iterable[int], capacity: int) -> int:
    """``ceil(sum / capacity)``: the bins the items' total volume needs (bound L1)."""
    return -(-sum(_checked(sizes, capacity)) // capacity)


def martello_toth_l2(sizes: Iterable[int], capacity: int) -> int:
    """The Martello-Toth lower bound L2 for bin packing (integer sizes, each <= capacity).

    For a threshold ``k`` (0 <= k <= capacity/2), items larger than ``capacity - k`` (N1) and
    items in ``(capacity/2, capacity - k]`` (N2) each need a bin of their own; items in
    ``[k, capacity/2]`` (N3) can only go into the room the N2 bins leave, or into new bins::

        L(k) = |N1| + |N2| + max(0, ceil((sum N3 - (|N2| * capacity - sum N2)) / capacity))

    L2 is the largest L(k). It is at least the volume bound (take k = 0). Computed from
    running counts and sums over the item sizes, so it costs O(n + capacity).
    """
    items = _checked(sizes, capacity)
    if not items:
        return 0
    counts = [0] * (capacity + 1)
    for size in items:
        counts[size] += 1
    n_upto = list(accumulate(counts))  # n_upto[s]: items of size <= s
    sum_upto = list(accumulate(s * c for s, c in enumerate(counts)))  # their total size
    half = capacity // 2  # "w > capacity/2" is "w > half" for integers, odd capacity too
    n = len(items)
    best = 0
    for k in range(half + 1):
        top = capacity - k
        n1 = n - n_upto[top]
        n2 = n_upto[top] - n_upto[half]
        room2 = n2 * capacity - (sum_upto[top] - sum_upto[half])
        sum3 = sum_upto[half] - (sum_upto[k - 1] if k > 0 else 0)
        bound = n1 + n2 + max(0, -(-(sum3 - room2) // capacity))
        best = max(best, bound)
    return best


def packing_lower_bound(sizes: Iterable[int], capacity: int) -> int:
    """No packing of these items into bins of ``capacity`` uses fewer bins than this."""
    items = _checked(sizes, capacity)
    return max(volume_bound(items, capacity), martello_toth_l2(items, capacity))


def first_fit_decreasing(sizes: Iterable[int], capacity: int) -> int:
    """Bins a first-fit-decreasing packing uses: largest item first, each into the first
    (lowest-numbered) bin with room for it.

    A max-tree over the bins' free room finds that bin in O(log n), so tens of thousands of
    items take a fraction of a second.
    """
    items = sorted(_checked(sizes, capacity), reverse=True)
    if not items:
        return 0
    leaves = 1
    while leaves < len(items):  # never more bins than items
        leaves *= 2
    room = [capacity] * (2 * leaves)  # room[1] is the root; unopened bins are empty
    opened = 0
    for size in items:
        node = 1
        while node < leaves:  # the root always has room: an unopened bin is left
            node = 2 * node if room[2 * node] >= size else 2 * node + 1
        opened = max(opened, node - leaves + 1)
        room[node] -= size
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return opened


def optimal_zbud_frames(zsizes: Iterable[int]) -> int:
    """Fewest frames that hold these compressed pages, at most two per frame.

    Bin packing with at most two items per bin is solved exactly by pairing, after sorting, the
    largest remaining page with the smallest one whenever both fit in one frame.
    """
    chunks = sorted((z + CHUNK_SIZE - 1) // CHUNK_SIZE for z in zsizes)
    lo, hi, frames = 0, len(chunks) - 1, 0
    while lo <= hi:
        if lo < hi and chunks[lo] + chunks[hi] <= USABLE_CHUNKS:
            lo += 1
        hi -= 1
        frames += 1
    return frames


def xvmalloc_bounds(zsizes: Iterable[int]) -> dict[str, int]:
    """Frame counts for xvmalloc blocks of these compressed sizes.

    ``ideal_frames`` (compressed bytes / frame) <= ``lower_bound_frames`` (no packing of the
    blocks uses fewer) <= ``ffd_frames`` (a packing that exists).
    """
    zs = list(zsizes)
    blocks = [xvmalloc_block_bytes(z) for z in zs]
    return {
        "blocks": len(blocks),
        "ideal_bytes": sum(zs),
        "ideal_frames": -(-sum(zs) // PAGE_SIZE),
        "block_bytes": sum(blocks),
        "volume_frames": volume_bound(blocks, PAGE_SIZE),
        "lower_bound_frames": packing_lower_bound(blocks, PAGE_SIZE),
        "ffd_frames": first_fit_decreasing(blocks, PAGE_SIZE),
    }


def zbud_bounds(zsizes: Iterable[int]) -> dict[str, Any]:
    """Frame counts for zbud buddies of these compressed sizes (the pairing is optimal)."""
    zs = list(zsizes)
    return {
        "buddies": len(zs),
        "ideal_bytes": sum(zs),
        "ideal_frames": -(-sum(zs) // PAGE_SIZE),
        "optimal_frames": optimal_zbud_frames(zs),
    }
