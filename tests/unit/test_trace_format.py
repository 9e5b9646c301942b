"""The trace file format: header and records round trip, and what a reader makes of files
that are not traces, cut short or corrupt."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from tmem_agent.trace import fileformat as ff
from tmem_agent.trace.reader import PageEvent, ReplyEvent, TraceReader, read_all


def write_trace(path: Path, records: list[bytes], meta: dict[str, object] | None = None) -> None:
    path.write_bytes(ff.encode_header(meta or {"vm": "x"}) + b"".join(records))


def put_record(index: int, flags: int = ff.F_PERSISTENT) -> bytes:
    return ff.PAGE_REC.pack(1000 + index, ff.PUT, flags, 1, 9, 0, 1, 2, 3, index, 0xABC + index,
                            1234, 0)


def reply_record(count: int, bits: int) -> bytes:
    return ff.REPLY_REC.pack(5000, ff.REPLY, ff.OK, 1, 9, count, 10,
                             bits.to_bytes(32, "little"), 0)


def test_header_round_trip_and_alignment() -> None:
    data = ff.encode_header({"vm": "a", "big": "x" * 5000})
    assert len(data) % ff.BLOCK == 0 and len(data) == 2 * ff.BLOCK
    meta, offset = ff.decode_header(data)
    assert meta["vm"] == "a" and offset == len(data) and meta["record_size"] == 64


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t"
    page = bytes(range(256)) * 16
    rec = put_record(4, ff.F_PERSISTENT | ff.F_PAGE | ff.F_BATCH)
    write_trace(path, [put_record(1), rec + page, reply_record(2, 0b01)])
    meta, events, warnings = read_all(str(path))
    assert warnings == [] and meta["vm"] == "x"
    first, second, reply = events
    assert isinstance(first, PageEvent) and first.oid == (1, 2, 3) and first.index == 1
    assert first.hash == 0xABD and first.zsize == 1234 and first.persistent
    assert first.page is None
    assert isinstance(second, PageEvent) and second.page == page
    assert isinstance(reply, ReplyEvent) and reply.outcomes() == [True, False]


def test_a_version_1_file_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "t"
    text = b'{"vm": "old", "hash": "blake2b-64"}'
    head = ff.HEADER_HEAD.pack(ff.MAGIC, 1, 0, ff.BLOCK, len(text))
    path.write_bytes((head + text).ljust(ff.BLOCK, b"\0") + put_record(1))
    meta, events, warnings = read_all(str(path))
    assert warnings == [] and meta["version"] == 1 and meta["estimate_every"] == 1
    assert meta["hash"] == "blake2b-64"
    assert isinstance(events[0], PageEvent) and events[0].estimated and events[0].zsize == 1234


def test_the_content_hash() -> None:
    page = bytes(range(256)) * 16
    assert ff.content_hash(page) == ff.content_hash(bytearray(page))
    assert ff.content_hash(page) == zlib.crc32(page[:2048]) | zlib.crc32(page[2048:]) << 32
    other = page[:4095] + b"\x01"
    assert ff.content_hash(other) >> 32 != ff.content_hash(page) >> 32
    assert ff.content_hash(other) & 0xFFFFFFFF == ff.content_hash(page) & 0xFFFFFFFF
    assert len(ff.SAME_FILLED) == 256 and ff.SAME_FILLED[ff.content_hash(bytes(4096))][0] == 0
    assert ff.sampled(ff.content_hash(page), 1)


def test_zero_padding_ends_the_records(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_trace(path, [put_record(1), bytes(ff.BLOCK - 64)])
    _, events, warnings = read_all(str(path))
    assert len(events) == 1 and warnings == []


@pytest.mark.parametrize("cut", [10, 64 + 100])
def test_a_trace_cut_short_keeps_its_good_records_with_a_warning(tmp_path: Path,
                                                                 cut: int) -> None:
    path = tmp_path / "t"
    page = b"\x07" * ff.PAGE_SIZE
    write_trace(path, [put_record(1), (put_record(2, ff.F_PAGE) + page)[:cut]])
    _, events, warnings = read_all(str(path))
    assert len(events) == 1 and len(warnings) == 1 and "cut short" in warnings[0]


def test_an_unknown_kind_ends_the_records_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "t"
    bad = bytearray(put_record(2))
    bad[8] = 0x55
    write_trace(path, [put_record(1), bytes(bad), put_record(3)])
    _, events, warnings = read_all(str(path))
    assert len(events) == 1 and "unknown kind 85" in warnings[0]


def test_kind_zero_with_data_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "t"
    bad = bytearray(64)
    bad[20] = 1
    write_trace(path, [put_record(1), bytes(bad)])
    _, events, warnings = read_all(str(path))
    assert len(events) == 1 and "corrupt record" in warnings[0]


@pytest.mark.parametrize("data, message", [
    (b"", "bad magic"),
    (b"PK\x03\x04" + bytes(100), "bad magic"),
    (ff.HEADER_HEAD.pack(ff.MAGIC, 99, 0, 4096, 2) + bytes(4000), "version 99 .*knows 1, 2"),
    (ff.HEADER_HEAD.pack(ff.MAGIC, 1, 0, 100, 2) + bytes(4000), "corrupt trace header"),
    (ff.HEADER_HEAD.pack(ff.MAGIC, 1, 0, 4096, 5) + b"nojso" + bytes(4096), "corrupt"),
    (ff.encode_header({"vm": "x"})[:2000], "truncated"),
])
def test_files_that_are_not_traces_raise_one_error(tmp_path: Path, data: bytes,
                                                   message: str) -> None:
    path = tmp_path / "t"
    path.write_bytes(data)
    with pytest.raises(ff.TraceError, match=message):
        TraceReader(str(path))


def test_bitmap_bits_are_bounded() -> None:
    bitmap = (2**256 - 1).to_bytes(32, "little")
    assert ff.bitmap_bits(bitmap, 1000) == [True] * 256
    assert ff.bitmap_bits(bytes(32), 3) == [False] * 3
