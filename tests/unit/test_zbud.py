"""zbud over a real mmap arena: layout in the frames, placement policy, LRU eviction, reclaim.

The random-sequence test keeps its own model (page contents, owners, frame LRU order) and
checks the store against it after every step, including while the arena's reclaimer runs
inside ``store`` and the eviction callback frees further pages.
"""

from __future__ import annotations

import random
import struct
from collections import OrderedDict

import lzo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmemd import PAGE_SIZE
from tmemd.store.arena import FrameArena
from tmemd.store.zbud import CHUNK_SIZE, MAX_SIZE, ZbudStore
from tmemd.tools.corpus import SYNTHETIC, build_corpus
from tmemd.tools.packing import optimal_zbud_frames

HEADER = struct.Struct("<HH")


def frame_of(handle: int) -> int:
    return handle >> 24


def page_data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks(size: int) -> int:
    return -(-size // CHUNK_SIZE)


def snapshot(store: ZbudStore, arena: FrameArena, handles: list[int]) -> tuple[object, ...]:
    stats = store.stats()
    stats.pop("failed_get_free_pages")
    return stats, arena.frames_in_use, [store.load(h) for h in handles]


def test_buddies_sit_in_the_frame_as_zcache_laid_them_out() -> None:
    arena = FrameArena(4)
    store = ZbudStore(arena)
    first, second = page_data(1000, 1), page_data(130, 2)
    h1 = store.store(first, "a")
    h2 = store.store(second, "b")
    assert h1 is not None and h2 is not None
    frame = frame_of(h1)
    assert frame_of(h2) == frame and store.frames_in_use == 1 == arena.frames_in_use
    base = frame * PAGE_SIZE
    buf = arena.buf
    assert HEADER.unpack_from(buf, base) == (1000, 130)
    assert buf[base + CHUNK_SIZE : base + CHUNK_SIZE + 1000] == first
    start = base + PAGE_SIZE - chunks(130) * CHUNK_SIZE
    assert buf[start : start + 130] == second
    assert store.load(h1) == first and store.load(h2) == second
    assert store.size(h1) == 1000 and store.size(h2) == 130
    assert type(store.load(h1)) is bytes
    store.free(h1)
    assert HEADER.unpack_from(buf, base) == (0, 130)
    store.check_invariants()
    store.free(h2)
    assert store.frames_in_use == 0 == arena.frames_in_use


def test_allocation_prefers_the_fullest_frame_that_fits() -> None:
    store = ZbudStore(FrameArena(8))
    roomy = store.store(page_data(40 * CHUNK_SIZE, 1), 1)  # 23 chunks free
    tight = store.store(page_data(60 * CHUNK_SIZE, 2), 2)  # 3 chunks free
    middle = store.store(page_data(50 * CHUNK_SIZE, 3), 3)  # 13 chunks free
    assert roomy is not None and tight is not None and middle is not None
    assert len({frame_of(roomy), frame_of(tight), frame_of(middle)}) == 3
    assert store.stats()["zbud_unbuddied_list_counts"][3] == 1
    small = store.store(page_data(2 * CHUNK_SIZE, 4), 4)
    assert small is not None and frame_of(small) == frame_of(tight)
    mid = store.store(page_data(12 * CHUNK_SIZE, 5), 5)
    assert mid is not None and frame_of(mid) == frame_of(middle)
    big = store.store(page_data(20 * CHUNK_SIZE, 6), 6)
    assert big is not None and frame_of(big) == frame_of(roomy)
    stats = store.stats()
    assert stats["zbud_buddied_count"] == 3 and stats["zbud_curr_raw_pages"] == 3
    store.check_invariants()


@pytest.mark.parametrize("size", [0, MAX_SIZE + 1, PAGE_SIZE])
def test_empty_or_oversize_data_is_refused_and_changes_nothing(size: int) -> None:
    arena = FrameArena(2)
    store = ZbudStore(arena)
    kept = store.store(page_data(100, 1), "kept")
    assert kept is not None
    before = snapshot(store, arena, [kept]), store.stats()
    with pytest.raises(ValueError, match="zbud stores 1..3968 bytes"):
        store.store(bytes(size), "bad")
    assert (snapshot(store, arena, [kept]), store.stats()) == before


def test_unknown_handles_are_refused_and_change_nothing() -> None:
    arena = FrameArena(2)
    store = ZbudStore(arena)
    h = store.store(page_data(100, 1), "x")
    assert h is not None
    before = snapshot(store, arena, [h])
    for bad in (h + 1, h ^ (1 << 30), 0):
        for call in (store.load, store.size, store.free):
            with pytest.raises(KeyError, match="no page is stored under handle"):
                call(bad)
    assert snapshot(store, arena, [h]) == before
    store.free(h)
    with pytest.raises(KeyError):
        store.free(h)


def test_full_arena_gives_none_and_changes_nothing() -> None:
    arena = FrameArena(2)
    store = ZbudStore(arena)
    held = [store.store(page_data(MAX_SIZE, i), i) for i in range(2)]
    assert None not in held
    handles = [h for h in held if h is not None]
    before = snapshot(store, arena, handles)
    assert store.store(page_data(2 * CHUNK_SIZE, 9), 9) is None
    assert snapshot(store, arena, handles) == before
    assert store.stats()["failed_get_free_pages"] == 1
    fits = store.store(page_data(CHUNK_SIZE, 10), 10)  # one chunk is still free in each frame
    assert fits is not None
    store.check_invariants()


def test_eviction_takes_the_least_recently_stored_frame_whole() -> None:
    evicted: list[object] = []
    arena = FrameArena(4)
    store = ZbudStore(arena, on_evict=evicted.append)
    a = store.store(page_data(3000, 1), "a")  # frame A, old
    b = store.store(page_data(3900, 2), "b")  # frame B, too full for a2
    a2 = store.store(page_data(500, 3), "a2")  # joins A, A becomes most recent
    assert a is not None and b is not None and a2 is not None
    assert frame_of(a2) == frame_of(a)
    assert store.evict_lru_frame()
    assert evicted == ["b"]
    assert store.evict_lru_frame()
    assert sorted(map(str, evicted)) == ["a", "a2", "b"]
    assert not store.evict_lru_frame()
    stats = store.stats()
    assert stats["evicted_raw_pages"] == 2
    assert stats["evicted_buddied_pages"] == 1 and stats["evicted_unbuddied_pages"] == 1
    assert arena.frames_in_use == 0
    for gone in (a, b, a2):
        with pytest.raises(KeyError):
            store.load(gone)


def test_check_invariants_notices_a_corrupted_header() -> None:
    arena = FrameArena(2)
    store = ZbudStore(arena)
    h = store.store(page_data(700, 1), 1)
    assert h is not None
    HEADER.pack_into(arena.buf, frame_of(h) * PAGE_SIZE, 701, 0)
    with pytest.raises(AssertionError, match="zbud"):
        store.check_invariants()


class ZbudModel:
    """What the store must hold: contents and owners by handle, frames in LRU order."""

    def __init__(self, frames: int, evict_frees_another: bool) -> None:
        self.arena = FrameArena(frames)
        self.store = ZbudStore(self.arena, on_evict=self.on_evict)
        self.arena.reclaimer = self.store.evict_lru_frame
        self.evict_frees_another = evict_frees_another
        self.data: dict[int, bytes] = {}
        self.handle_of: dict[object, int] = {}
        self.owner_of: dict[int, object] = {}
        self.lru: OrderedDict[int, set[int]] = OrderedDict()
        self.evicting: int | None = None

    def forget(self, handle: int) -> None:
        del self.data[handle]
        del self.handle_of[self.owner_of.pop(handle)]
        frame = self.lru[frame_of(handle)]
        frame.remove(handle)
        if not frame:
            del self.lru[frame_of(handle)]

    def on_evict(self, owner: object) -> None:
        handle = self.handle_of[owner]
        frame = frame_of(handle)
        if self.evicting is None:
            self.evicting = frame
            assert frame == next(iter(self.lru)), "evicted a frame that was not least recent"
        assert frame == self.evicting, "one eviction reported pages of two frames"
        self.forget(handle)
        if frame not in self.lru:
            self.evicting = None
            others = [h for h in self.data if frame_of(h) != frame]
            if self.evict_frees_another and others:
                self.free(min(others))  # what the tmem layer may do from inside the callback

    def put(self, size: int, seed: int) -> None:
        data = page_data(size, seed)
        handle = self.store.store(data, seed)
        assert self.evicting is None, "an eviction did not report every page of its frame"
        if handle is None:
            assert self.arena.frames_free == 0
            return
        assert handle not in self.data
        self.data[handle] = data
        self.handle_of[seed] = handle
        self.owner_of[handle] = seed
        frame = frame_of(handle)
        self.lru.setdefault(frame, set()).add(handle)
        self.lru.move_to_end(frame)

    def free(self, handle: int) -> None:
        self.store.free(handle)
        self.forget(handle)

    def evict(self) -> None:
        had_frames = bool(self.lru)
        assert self.store.evict_lru_frame() == had_frames
        assert self.evicting is None

    def check(self) -> None:
        self.store.check_invariants()
        for handle, data in self.data.items():
            assert self.store.load(handle) == data
        assert self.store.frames_in_use == len(self.lru) == self.arena.frames_in_use
        assert self.store.stats()["zbud_curr_zpages"] == len(self.data)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, MAX_SIZE)),
        st.tuples(st.just("put"), st.integers(1, 3 * CHUNK_SIZE)),
        st.tuples(st.just("free"), st.integers(0, 1 << 16)),
        st.tuples(st.just("evict"), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, frames=st.integers(1, 6), evict_frees_another=st.booleans())
def test_random_sequences_keep_every_page_and_every_invariant(
    ops: list[tuple[str, int]], frames: int, evict_frees_another: bool
) -> None:
    model = ZbudModel(frames, evict_frees_another)
    for seed, (op, arg) in enumerate(ops):
        if op == "put":
            model.put(arg, seed)
        elif op == "free" and model.data:
            handles = sorted(model.data)
            model.free(handles[arg % len(handles)])
        elif op == "evict":
            model.evict()
        model.check()
    for handle in list(model.data):
        model.free(handle)
    model.check()
    assert model.arena.frames_in_use == 0


def test_long_random_run_under_memory_pressure() -> None:
    rng = random.Random(7)
    model = ZbudModel(24, evict_frees_another=True)
    for seed in range(6000):
        if model.data and rng.random() < 0.4:
            model.free(rng.choice(list(model.data)))
        elif rng.random() < 0.02:
            model.evict()
        else:
            model.put(rng.randint(1, MAX_SIZE), seed)
        if seed % 100 == 0:
            model.check()
    model.check()
    assert model.store.stats()["evicted_raw_pages"] > 0


def optimal_frames(sizes: list[int]) -> int:
    """Fewest frames holding at most two buddies each: pair the largest with the smallest."""
    ordered = sorted(chunks(s) for s in sizes)
    low, high, frames = 0, len(ordered) - 1, 0
    while low <= high:
        if low < high and ordered[low] + ordered[high] <= PAGE_SIZE // CHUNK_SIZE - 1:
            low += 1
        high -= 1
        frames += 1
    return frames


def test_density_on_real_pages_is_near_an_optimal_pairing() -> None:
    """Within 5 % of an optimal pairing of the same buddies, on the synthetic corpus."""
    pages = [p for p in build_corpus(4000, seed=3, source=SYNTHETIC) if p.count(p[0]) != len(p)]
    compressed = [c for c in (lzo.compress(p, 1, False) for p in pages) if len(c) <= MAX_SIZE]
    assert len(compressed) > 2000
    arena = FrameArena(len(compressed))
    store = ZbudStore(arena)
    handles = [store.store(c, i) for i, c in enumerate(compressed)]
    assert None not in handles
    optimum = optimal_frames([len(c) for c in compressed])
    assert optimum == optimal_zbud_frames(len(c) for c in compressed)
    assert optimum <= store.frames_in_use <= 1.05 * optimum
    stats = store.stats()
    assert stats["zbud_cumul_zbytes"] == sum(map(len, compressed))
    assert sum(stats["zbud_cumul_chunk_counts"]) == len(compressed)  # type: ignore[arg-type]
    store.check_invariants()
    for h, c in zip(handles, compressed, strict=True):
        assert h is not None and store.load(h) == c
        store.free(h)
    assert arena.frames_in_use == 0
