"""Blocks of the cached disk as tmem handles, in cleancache's shape.

cleancache named a page by (pool: one per file system, object: the inode, index: the page
within the file). Here the pool is one per disk, the object a group of :data:`GROUP_BLOCKS`
consecutive 4 KiB blocks and the index the block within its group, so a range of whole
groups is dropped with one FLUSH_OBJECT each, and the rest with FLUSH_BATCH.
"""

from __future__ import annotations

from ..channel import wire

GROUP_SHIFT = 8
GROUP_BLOCKS = 1 << GROUP_SHIFT  # 1 MiB of disk per tmem object
INDEX_MASK = GROUP_BLOCKS - 1


def block_key(block: int) -> tuple[wire.Oid, int]:
    """(object id, index) of disk block ``block``."""
    return (block >> GROUP_SHIFT, 0, 0), block & INDEX_MASK


def split_range(first: int, count: int) -> tuple[list[int], list[int]]:
    """The groups wholly inside blocks [first, first + count) and the blocks outside them."""
    end = first + count
    lo = -(-first // GROUP_BLOCKS)  # first whole group
    hi = end // GROUP_BLOCKS  # one past the last whole group
    if lo >= hi:
        return [], list(range(first, end))
    blocks = list(range(first, lo * GROUP_BLOCKS)) + list(range(hi * GROUP_BLOCKS, end))
    return list(range(lo, hi)), blocks
