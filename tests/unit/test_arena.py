import pytest

from tmemd.store.arena import FrameArena


def test_frames_are_unique_until_freed_and_limit_applies() -> None:
    arena = FrameArena(8)
    got = [arena.alloc_frame() for _ in range(8)]
    assert sorted(f for f in got if f is not None) == list(range(8))
    assert arena.alloc_frame() is None and arena.failed_alloc == 1
    arena.free_frame(3)
    assert arena.alloc_frame() == 3
    for f in range(8):
        arena.free_frame(f)
    arena.set_limit(2)
    assert arena.alloc_frame() is not None and arena.alloc_frame() is not None
    assert arena.alloc_frame() is None


def test_reclaimer_is_asked_when_full() -> None:
    arena = FrameArena(2)
    held = [arena.alloc_frame(), arena.alloc_frame()]
    calls = []

    def reclaim() -> bool:
        calls.append(1)
        if held:
            f = held.pop()
            assert f is not None
            arena.free_frame(f)
            return True
        return False

    arena.reclaimer = reclaim
    assert arena.alloc_frame() is not None
    assert calls == [1]


def test_bad_limit_is_rejected() -> None:
    arena = FrameArena(2)
    with pytest.raises(ValueError):
        arena.set_limit(3)
    assert arena.limit_frames == 2
