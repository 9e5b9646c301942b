"""Parts of the swap shim on their own: the location map, netlink attributes, sizes."""

from __future__ import annotations

import argparse
import os
import struct
from pathlib import Path

import pytest

from tmem_agent.channel import wire
from tmem_agent.service import default_vm_name, parse_size
from tmem_agent.swap import netlink
from tmem_agent.swap.fallback import FallbackFile, FallbackWorker, runs
from tmem_agent.swap.locmap import EMPTY, FALLBACK, LOST, TMEM, LocationMap
from tmem_agent.swap.nbdconn import PagePool
from tmem_agent.swap.shim import pack_batch_keys, swap_key

BOOT = bytes(range(16))


def test_emptying_a_range_reports_what_held_a_copy_and_what_was_in_the_fallback(
        tmp_path: Path) -> None:
    locmap = LocationMap(str(tmp_path / "map"), 10000, BOOT)
    states = {2: TMEM, 4095: FALLBACK, 4096: LOST, 4097: TMEM, 8000: FALLBACK, 9999: TMEM}
    for page, state in states.items():
        locmap.set(page, state)
    assert locmap.empty_range(3, 8000) == ([4095, 4096, 4097, 8000], [4095, 8000])
    assert locmap.census() == {"empty": 9998, "tmem": 2, "fallback": 0, "lost": 0}
    assert locmap.empty_range(0, 20000) == ([2, 9999], [])  # clipped to the map
    assert locmap.empty_range(0, 10000) == ([], [])
    locmap.close()


def test_location_map_is_kept_for_the_same_boot_and_reset_for_another(tmp_path: Path) -> None:
    path = str(tmp_path / "map")
    first = LocationMap(path, 10000, BOOT)
    assert first.fresh and first.pool_id == -1
    first.set(3, TMEM)
    first.set(9000, FALLBACK)
    first.pool_id = 7
    second = LocationMap(path, 10000, BOOT)  # shared mapping: no sync needed
    assert not second.fresh and second.pool_id == 7
    assert second.census() == {"empty": 9998, "tmem": 1, "fallback": 1, "lost": 0}
    assert list(second.not_empty(0, 10000)) == [3, 9000]
    assert list(second.not_empty(4, 8996)) == []
    assert second.mark_tmem_lost() == 1 and first.get(3) == LOST
    first.close()
    second.close()
    other_boot = LocationMap(path, 10000, bytes(16))
    assert other_boot.fresh and other_boot.get(9000) == EMPTY and other_boot.pool_id == -1
    other_boot.close()
    resized = LocationMap(path, 20000, bytes(16))
    assert resized.fresh and "20000" in resized.reset_reason
    resized.close()


def test_fallback_pages_runs_and_holes(tmp_path: Path) -> None:
    pool = PagePool(3)
    fallback = FallbackFile(str(tmp_path / "fb"), 64)
    assert fallback.allocated_bytes() == 0  # sparse
    pool.views[0][:] = b"x" * 4096
    pool.views[1][:] = b"y" * 4096
    fallback.write(5, [pool.views[0], pool.views[1]])
    fallback.read(6, [pool.views[2]])
    assert bytes(pool.views[2]) == b"y" * 4096
    assert fallback.allocated_bytes() >= 8192
    fallback.discard([5, 6])
    fallback.read(5, [pool.views[2]])
    assert bytes(pool.views[2]) == bytes(4096)
    with pytest.raises(OSError):
        fallback.read(64, [pool.views[2]])  # past the end: a short read
    fallback.close()


def test_fallback_worker_runs_jobs_in_order_and_reports_errors(tmp_path: Path) -> None:
    pool = PagePool(4)  # page-aligned buffers: the file may be O_DIRECT
    worker = FallbackWorker(FallbackFile(str(tmp_path / "fb"), 8), threads=1)  # FIFO
    worker.start(lambda: {"setup": "ran"})
    done: list[tuple[str, OSError | None]] = []
    for slot, tag in enumerate(b"abc"):
        pool.views[slot][:] = bytes([tag]) * 4096
        worker.write(1, [pool.views[slot]], lambda error, t=tag: done.append((chr(t), error)))
    worker.read(1, [pool.views[3]], lambda error: done.append(("read", error)))
    worker.read(8, [pool.views[3]], lambda error: done.append(("past end", error)))
    worker.drain()
    assert [name for name, _ in done] == ["a", "b", "c", "read", "past end"]
    assert all(error is None for _, error in done[:4]) and isinstance(done[4][1], OSError)
    assert bytes(pool.views[3]) == b"c" * 4096 and worker.pending == 0
    assert worker.thread_setup == {"setup": "ran"}
    worker.close()
    worker.file.close()


def test_runs() -> None:
    assert runs([]) == []
    assert runs([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 1), (9, 2)]
    assert runs([4, 4, 5]) == [(4, 1), (4, 2)]


def test_frontswap_handles() -> None:
    assert swap_key(0) == (0, 0)
    assert swap_key(17) == (1, 1)
    assert swap_key(0x12345) == (5, 0x1234)
    assert len({swap_key(i) for i in range(4096)}) == 4096


@pytest.mark.parametrize("pages", [[0], [5, 3, 0x12345], list(range(1000, 1256)), [7] * 3])
def test_a_batch_s_keys_are_each_page_s_swap_key(pages: list[int]) -> None:
    frame = bytearray(wire.BATCH_HEAD.size + len(pages) * wire.KEY.size + 5)
    end = pack_batch_keys(frame, 9, pages)
    expected = wire.batch_request(9, [((oid, 0, 0), index)
                                      for oid, index in map(swap_key, pages)])
    assert end == len(expected) and frame[:end] == expected


def test_netlink_attributes_are_padded_and_parse_back() -> None:
    packed = netlink.u32(1, 7) + netlink.attr(10, b"abc") + netlink.u64(8, 300)
    assert len(packed) == 8 + 8 + 12
    attrs = netlink.parse_attrs(packed)
    assert struct.unpack("=I", attrs[1])[0] == 7 and attrs[10] == b"abc"
    assert struct.unpack("=Q", attrs[8])[0] == 300
    nested = netlink._sockets([5])
    outer = netlink.parse_attrs(nested)[netlink.NBD_ATTR_SOCKETS]
    item = netlink.parse_attrs(outer)[netlink.NBD_SOCK_ITEM]
    assert struct.unpack("=I", netlink.parse_attrs(item)[netlink.NBD_SOCK_FD])[0] == 5
    assert netlink.device_index("/dev/nbd12") == 12
    with pytest.raises(ValueError):
        netlink.device_index("/dev/sda")


@pytest.mark.parametrize("text,size", [("1G", 1 << 30), ("512M", 512 << 20), ("64KiB", 65536),
                                       ("8192", 8192), ("1.5G", 3 << 29)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1X", "100", "-4K", "G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_vm_name_comes_from_the_kernel_command_line(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 tmem.vm=guest-7 quiet\n")
    assert default_vm_name(str(cmdline)) == "guest-7"
    cmdline.write_text("console=ttyS0 tmem.vm= quiet\n")
    assert default_vm_name(str(cmdline)) == os.uname().nodename
    assert default_vm_name(str(tmp_path / "absent")) == os.uname().nodename
