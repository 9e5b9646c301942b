"""The state file's format: a byte-for-byte round trip, same-filled pages in a few bytes,
version 1 files still read, and every kind of damage refused before loading. (Where the file
may live and who may own it: test_statepath.py.)"""

import os
import random
import shutil
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tmemd import PAGE_SIZE
from tmemd.service.statefile import (
    HEADER,
    KIND_FILLED,
    KIND_PAGE,
    RECORD_HEAD,
    VERSION,
    StateFileError,
    load_state,
    save_state,
)
from tmemd.store.tmem import StoreConfig, TmemStore

SHARED_UUID = bytes(range(1, 17))


VOCABULARY = [bytes(random.Random(i).choices(b"abcdefghijklmnop", k=6)) for i in range(48)]


def text_page(seed: int) -> bytes:
    """A page of words that compresses well under 7/8, different for every seed."""
    words = random.Random(seed).choices(VOCABULARY, k=700)
    return b" ".join(words)[:PAGE_SIZE].ljust(PAGE_SIZE, b".")


@pytest.fixture
def source() -> Iterator[TmemStore]:
    """vm1: persistent pool 0, (destroyed 1), ephemeral 2, persistent 3, shared ephemeral 4;
    vm2: joins the shared pool as its pool 0, quota 1 MiB, frozen."""
    store = TmemStore(StoreConfig(memory_limit_bytes=16 << 20))
    vm1 = store.new_client("vm1")
    assert store.new_pool(vm1, 1) == 0
    assert store.new_pool(vm1, 1) == 1
    assert store.new_pool(vm1, 0) == 2
    assert store.new_pool(vm1, 1, codec="zstd") == 3
    assert store.new_pool(vm1, 2, SHARED_UUID) == 4
    store.destroy_pool(vm1, 1)
    vm2 = store.new_client("vm2", quota_bytes=1 << 20)
    assert store.new_pool(vm2, 2, SHARED_UUID) == 0
    for index in range(40):
        assert store.put(vm1, 0, (index % 3, 7, 1 << 63), index, text_page(index))
        assert store.put(vm1, 2, (5, 0, 0), index, text_page(1000 + index))
    assert store.put(vm1, 3, (0, 0, 0), 0xFFFFFFFF, text_page(77))
    assert store.put(vm1, 3, (0, 0, 1), 0, bytes(PAGE_SIZE))  # same-filled
    assert store.put(vm1, 4, (9, 9, 9), 3, text_page(88))
    store.freeze(vm2)
    yield store
    store.close()


@pytest.fixture
def target() -> Iterator[TmemStore]:
    store = TmemStore(StoreConfig(memory_limit_bytes=16 << 20))
    yield store
    store.close()


def persistent_pages(store: TmemStore, client_id: int) -> dict[tuple, bytes]:
    return {
        (pool, oid, index): page
        for pool, _f, _c, _u, oid, index, page in store.iter_persistent(client_id)
    }


def pool_layout(store: TmemStore, client_id: int) -> list[tuple]:
    return [(p["pool_id"], p["flags"], p["uuid"], p["codec"]) for p in store.pools(client_id)]


SESSIONS = [{"client_id": 1, "name": "vm1", "peer": "a"}, {"client_id": 2, "peer": "b"}]


def test_round_trip_restores_clients_pools_and_pages_byte_for_byte(
    source: TmemStore, target: TmemStore, tmp_path: Path
) -> None:
    path = str(tmp_path / "tmemd.state")
    save_state(path, source, SESSIONS)
    assert os.listdir(tmp_path) == ["tmemd.state"], "no temporary file is left behind"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, "guest memory is private"
    target.new_client("unrelated")  # takes id 1, so the loaded clients get new ids
    sessions = load_state(path, target)
    names = {target.client_name(c): c for c in target.clients()}
    assert set(names) == {"unrelated", "vm1", "vm2"}
    assert sessions == [
        {"client_id": names["vm1"], "name": "vm1", "peer": "a"},
        {"client_id": names["vm2"], "peer": "b"},
    ]
    for name, old_id in (("vm1", 1), ("vm2", 2)):
        new_id = names[name]
        assert persistent_pages(target, new_id) == persistent_pages(source, old_id)
        assert pool_layout(target, new_id) == pool_layout(source, old_id)
    assert len(persistent_pages(target, names["vm1"])) == 42
    # the guest's handles work unchanged: same pool ids, same oids and indexes
    assert target.get(names["vm1"], 3, (0, 0, 0), 0xFFFFFFFF) == text_page(77)
    assert target.get(names["vm2"], 0, (9, 9, 9), 3) is None  # shared pools are ephemeral
    assert target.get(names["vm1"], 2, (5, 0, 0), 0) is None  # ephemeral pages are not saved
    vm2 = target.client_stats(names["vm2"])
    assert vm2["quota_bytes"] == 1 << 20 and vm2["frozen"] is True
    assert target.client_stats(names["vm1"])["frozen"] is False


def test_saving_again_replaces_the_file_atomically(source: TmemStore, tmp_path: Path) -> None:
    path = tmp_path / "tmemd.state"
    save_state(str(path), source, [])
    first = path.read_bytes()
    source.flush_client(1)
    save_state(str(path), source, [])
    assert len(path.read_bytes()) < len(first)
    assert sorted(os.listdir(tmp_path)) == ["tmemd.state"]


def test_unwritable_location_is_a_clear_error(source: TmemStore, tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match=r"directory .*missing-dir does not exist"):
        save_state(str(tmp_path / "missing-dir" / "tmemd.state"), source, [])


def damaged_variants(data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "empty", b""
    yield "bad magic", b"X" + data[1:]
    for cut in (10, 30, len(data) // 2, len(data) - 1, len(data) - 30):
        yield f"truncated at {cut}", data[:cut]
    rng = random.Random(5)
    for offset in [3, 12, 21, 25, 100, len(data) - 5] + rng.sample(range(len(data)), 12):
        flipped = bytearray(data)
        flipped[offset] ^= 0x40
        yield f"bit flipped at {offset}", bytes(flipped)
    yield "trailing garbage", data + b"\x00" * 9


def test_corrupt_or_truncated_files_load_nothing(
    source: TmemStore, target: TmemStore, tmp_path: Path
) -> None:
    good = tmp_path / "good.state"
    save_state(str(good), source, SESSIONS)
    data = good.read_bytes()
    bad = tmp_path / "bad.state"
    for label, variant in damaged_variants(data):
        bad.write_bytes(variant)
        with pytest.raises(StateFileError):
            load_state(str(bad), target)
        assert target.clients() == [], label
        assert target.stats()["curr_pages"] == 0, label
    assert load_state(str(good), target) == [
        {"client_id": 1, "name": "vm1", "peer": "a"}, {"client_id": 2, "peer": "b"}
    ]


def test_errors_name_the_problem(source: TmemStore, target: TmemStore, tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    save_state(str(path), source, [])
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    with pytest.raises(StateFileError, match="truncated"):
        load_state(str(path), target)
    path.write_bytes(b"TMEMSTAT" + data[8:200] + bytes([data[200] ^ 1]) + data[201:])
    with pytest.raises(StateFileError, match="checksum mismatch at offset"):
        load_state(str(path), target)
    with pytest.raises(StateFileError, match="cannot read"):
        load_state(str(tmp_path / "absent.state"), target)


def test_name_clash_loads_nothing(source: TmemStore, target: TmemStore, tmp_path: Path) -> None:
    path = str(tmp_path / "s.state")
    save_state(path, source, [])
    target.new_client("vm2")
    with pytest.raises(StateFileError, match=r"already has clients \['vm2'\]"):
        load_state(path, target)
    assert [target.client_name(c) for c in target.clients()] == ["vm2"]


def test_a_store_too_small_for_the_pages_is_left_unchanged(
    source: TmemStore, tmp_path: Path
) -> None:
    path = str(tmp_path / "s.state")
    save_state(path, source, [])
    small = TmemStore(StoreConfig(memory_limit_bytes=16 << 20, persistent_cap_bytes=8 << 10))
    try:
        with pytest.raises(StateFileError, match="refused a page"):
            load_state(path, small)
        assert small.clients() == []
        assert small.stats()["curr_pages"] == 0
        assert small.stats()["host_frames"] == 0
    finally:
        small.close()


def record_kinds(path: Path) -> list[int]:
    """The kind of every record in a state file, in order."""
    data = path.read_bytes()
    offset, kinds = HEADER.size + 4, []
    while offset < len(data):
        kind, length = RECORD_HEAD.unpack_from(data, offset)
        kinds.append(kind)
        offset += RECORD_HEAD.size + length + 4
    return kinds


def test_same_filled_pages_take_a_few_bytes_each(tmp_path: Path) -> None:
    """100,000 zero pages made a 414 MB file (a whole page each); now about 4 MB."""
    store = TmemStore(StoreConfig(memory_limit_bytes=128 << 20))
    target = TmemStore(StoreConfig(memory_limit_bytes=128 << 20))
    try:
        vm = store.new_client("zeros")
        pool = store.new_pool(vm, 1)
        for n in range(100_000):
            assert store.put(vm, pool, (n // 1000, 0, 0), n % 1000, bytes(PAGE_SIZE))
        assert store.put(vm, pool, (1 << 40, 0, 0), 1, b"\xff" * PAGE_SIZE)
        assert store.put(vm, pool, (1 << 40, 0, 0), 2, text_page(3))
        path = tmp_path / "zeros.state"
        summary = save_state(str(path), store, [])
        assert (summary.pages, summary.filled) == (100_002, 100_001)
        assert path.stat().st_size < 100_001 * 64 + 2 * PAGE_SIZE
        kinds = record_kinds(path)
        assert kinds.count(KIND_FILLED) == 100_001 and kinds.count(KIND_PAGE) == 1
        load_state(str(path), target)
        loaded = target.clients()[0]
        assert target.get(loaded, pool, (99, 0, 0), 999) == bytes(PAGE_SIZE)
        assert target.get(loaded, pool, (1 << 40, 0, 0), 1) == b"\xff" * PAGE_SIZE
        assert target.get(loaded, pool, (1 << 40, 0, 0), 2) == text_page(3)
        assert target.stats()["curr_pages"] == 100_002
    finally:
        store.close()
        target.close()


def test_files_are_written_as_version_2(source: TmemStore, tmp_path: Path) -> None:
    path = tmp_path / "s.state"
    save_state(str(path), source, [])
    assert VERSION == 2
    assert struct.unpack_from("<H", path.read_bytes(), 8)[0] == 2


V1_FILE = Path(__file__).parent / "data" / "statefile-v1.bin"


def test_a_version_1_file_still_loads(target: TmemStore, tmp_path: Path) -> None:
    """data/statefile-v1.bin was written by the version 1 writer (same-filled pages whole)."""
    path = tmp_path / "old.state"
    shutil.copyfile(V1_FILE, path)
    path.chmod(0o600)
    assert struct.unpack_from("<H", path.read_bytes(), 8)[0] == 1
    assert record_kinds(path).count(KIND_PAGE) == 3
    sessions = load_state(str(path), target)
    (client,) = target.clients()
    assert target.client_name(client) == "old-vm"
    assert sessions == [{"vm": "old-vm", "boot_id": "11" * 16, "agent_session": "22" * 16,
                         "client_id": client}]
    text = (b"version one state file, written by tmemd before same-filled records. " * 80)
    assert target.get(client, 0, (1, 2, 3), 0) == text[:PAGE_SIZE]
    assert target.get(client, 0, (1, 2, 3), 1) == bytes(PAGE_SIZE)
    assert target.get(client, 0, (4, 5, 6), 7) == b"\xab" * PAGE_SIZE
    assert [p["pool_id"] for p in target.pools(client)] == [0, 1]
    assert target.client_stats(client)["quota_bytes"] == 1 << 20


def test_a_filled_record_in_a_version_1_file_is_refused(
    source: TmemStore, target: TmemStore, tmp_path: Path
) -> None:
    path = tmp_path / "s.state"
    save_state(str(path), source, [])
    data = bytearray(path.read_bytes())
    data[8:10] = struct.pack("<H", 1)
    data[16:20] = struct.pack("<I", zlib.crc32(bytes(data[:16])))
    path.write_bytes(bytes(data))
    with pytest.raises(StateFileError, match="unknown record kind 5"):
        load_state(str(path), target)
    assert target.clients() == []


def test_an_unknown_version_is_refused(
    source: TmemStore, target: TmemStore, tmp_path: Path
) -> None:
    path = tmp_path / "s.state"
    save_state(str(path), source, [])
    data = bytearray(path.read_bytes())
    data[8:10] = struct.pack("<H", 3)
    data[16:20] = struct.pack("<I", zlib.crc32(bytes(data[:16])))
    path.write_bytes(bytes(data))
    with pytest.raises(StateFileError, match="version 3.*reads versions 1, 2"):
        load_state(str(path), target)
