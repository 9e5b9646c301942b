"""Blocks of the cached disk as tmem handles, in cleancache's shape.

cleancache named a page by (pool: one per file system, object: the inode, index: the page
within the file). Here the pool is one per disk, the object a group of :data:`GROUP_BLOCKS`
consecutive 4 KiB blocks and the index the block within its group, so a range of whole
groups is dropped with one FLUSH_OBJECT each, and the rest with FLUSH_BATCH.
"""

from __future__ import annotations

import struct

from ..channel import wire

GROUP_SHIFT = 8
GROUP_BLOCKS = 1 << GROUP_SHIFT  # 1 MiB of disk per tmem object
INDEX_MASK = GROUP_BLOCKS - 1
_INDEX_BYTES = [struct.pack("<I", i) for i in range(GROUP_BLOCKS)]  # a key's last field
_GROUP = struct.Struct("<Q16x")  # a key's oid: (group, 0, 0)


def block_key(block: int) -> tuple[wire.Oid, int]:
    """(object id, index) of disk block ``block``."""
    return (block >> GROUP_SHIFT, 0, 0), block & INDEX_MASK


def run_keys(first: int, count: int) -> bytes:
    """The keys of blocks first .. first + count - 1 as the wire packs them
    (:data:`wire.KEY` each), built a group at a time by joining in C: the keys of one group
    differ only in their last four bytes, which a Python loop per block would spend most of
    a large read's time on in the guest."""
    parts: list[bytes] = []
    block, end = first, first + count
    while block < end:
        group = block >> GROUP_SHIFT
        stop = min(end, (group + 1) << GROUP_SHIFT)
        oid = _GROUP.pack(group)
        indexes = _INDEX_BYTES[block & INDEX_MASK : ((stop - 1) & INDEX_MASK) + 1]
        parts.append(oid + oid.join(indexes))
        block = stop
    return b"".join(parts)


def split_range(first: int, count: int) -> tuple[list[int], list[int]]:
    """The groups wholly inside blocks [first, first + count) and the blocks outside them."""
    end = first + count
    lo = -(-first // GROUP_BLOCKS)  # first whole group
    hi = end // GROUP_BLOCKS  # one past the last whole group
    if lo >= hi:
        return [], list(range(first, end))
    blocks = list(range(first, lo * GROUP_BLOCKS)) + list(range(hi * GROUP_BLOCKS, end))
    return list(range(lo, hi)), blocks
