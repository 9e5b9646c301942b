"""Where the state file may live and what is believed when it is read back: the directory's
owner and mode, the file's type, owner and mode, unpredictable temporary files, the lock,
stale temporary files, moving a file aside. (Tests run as root: files of "another user" are
made with os.chown to uid 65534.)"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tmemd import PAGE_SIZE
from tmemd.service.statefile import StateFileError, load_state, save_state
from tmemd.service.statepath import StateDir
from tmemd.store.tmem import StoreConfig, TmemStore

NOBODY = 65534
TEMP_NAME = re.compile(r"^\.tmemd\.state\.tmp-[0-9a-f]{16}$")


@pytest.fixture
def store() -> Iterator[TmemStore]:
    store = TmemStore(StoreConfig(memory_limit_bytes=4 << 20))
    client = store.new_client("vm1")
    pool = store.new_pool(client, 1)
    for index in range(4):
        page = (b"page %d " % index) * (PAGE_SIZE // 7)
        assert store.put(client, pool, (1, 2, 3), index, page.ljust(PAGE_SIZE, b"."))
    yield store
    store.close()


@pytest.fixture
def target() -> Iterator[TmemStore]:
    store = TmemStore(StoreConfig(memory_limit_bytes=4 << 20))
    yield store
    store.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory


def saved(directory: Path, store: TmemStore) -> Path:
    path = directory / "tmemd.state"
    save_state(str(path), store, [])
    return path


# ----- the directory -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o720, 0o702])
def test_a_directory_others_can_write_is_refused(
    store: TmemStore, state_dir: Path, mode: int
) -> None:
    state_dir.chmod(mode)
    with pytest.raises(StateFileError, match=f"writable by group or others \\(mode {mode:04o}"):
        save_state(str(state_dir / "tmemd.state"), store, [])
    with pytest.raises(StateFileError, match="writable by group or others"):
        StateDir(str(state_dir / "tmemd.state"))
    assert os.listdir(state_dir) == []


def test_a_directory_of_another_user_is_refused(store: TmemStore, state_dir: Path) -> None:
    os.chown(state_dir, NOBODY, NOBODY)
    with pytest.raises(StateFileError, match=f"owned by uid {NOBODY}, not by this daemon's"):
        save_state(str(state_dir / "tmemd.state"), store, [])
    assert os.listdir(state_dir) == []


def test_a_readable_directory_of_the_daemon_is_fine(store: TmemStore, state_dir: Path) -> None:
    state_dir.chmod(0o755)
    assert saved(state_dir, store).exists()


def test_a_parent_that_is_not_a_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateFileError, match=r"/file is not a directory"):
        StateDir(str(tmp_path / "file" / "tmemd.state"))


def test_a_state_path_that_is_a_directory_is_named(state_dir: Path, store: TmemStore) -> None:
    (state_dir / "tmemd.state").mkdir()
    with pytest.raises(StateFileError, match=r"tmemd\.state is a directory"):
        StateDir(str(state_dir / "tmemd.state"))
    with pytest.raises(StateFileError, match=r"tmemd\.state is a directory"):
        save_state(str(state_dir / "tmemd.state"), store, [])


# ----- writing -----------------------------------------------------------------------------
def test_the_file_is_private_whatever_the_umask(store: TmemStore, state_dir: Path) -> None:
    old = os.umask(0)
    try:
        path = saved(state_dir, store)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(state_dir) == ["tmemd.state"]


def test_temporary_names_are_unpredictable_and_created_exclusively(
    store: TmemStore, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[tuple[str, int]] = []
    real_open = os.open

    def spying_open(name: str, flags: int, *args: object, **kwargs: object) -> int:
        if ".tmp-" in str(name):
            created.append((str(name), flags))
        return real_open(name, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spying_open)
    saved(state_dir, store)
    saved(state_dir, store)
    assert len(created) == 2 and created[0][0] != created[1][0]
    for name, flags in created:
        assert TEMP_NAME.match(name), name
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT


def test_planted_files_at_the_old_temporary_name_have_no_effect(
    store: TmemStore, state_dir: Path, tmp_path: Path
) -> None:
    """The old name was ``<state>.tmp-<pid>``: a plant there was written through (a symlink
    made root overwrite its target; a planted file stayed its planter's)."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    old_name = state_dir / f"tmemd.state.tmp-{os.getpid()}"
    old_name.symlink_to(victim)
    planted = state_dir / "tmemd.state.tmp-1"
    planted.write_bytes(b"attacker")
    os.chown(planted, NOBODY, NOBODY)
    path = saved(state_dir, store)
    assert victim.read_bytes() == b"precious"
    assert planted.read_bytes() == b"attacker" and old_name.is_symlink()
    assert path.stat().st_uid == os.geteuid() and not path.is_symlink()


def test_a_symlink_at_the_state_path_is_replaced_never_followed(
    store: TmemStore, state_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (state_dir / "tmemd.state").symlink_to(victim)
    path = saved(state_dir, store)
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink() and path.stat().st_size > 4 * PAGE_SIZE


def test_a_failed_save_leaves_no_temporary_file_and_the_old_file(
    store: TmemStore, state_dir: Path
) -> None:
    path = saved(state_dir, store)
    before = path.read_bytes()

    def disk_full(stream: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with StateDir(str(path)) as directory, pytest.raises(
        StateFileError, match="cannot write state file .*No space left on device"
    ):
        directory.save(disk_full)
    assert os.listdir(state_dir) == ["tmemd.state"]
    assert path.read_bytes() == before


# ----- reading back ------------------------------------------------------------------------
def refused(path: Path, target: TmemStore, match: str) -> None:
    with pytest.raises(StateFileError, match=match):
        load_state(str(path), target)
    assert target.clients() == []


def test_a_file_of_another_user_is_refused(
    store: TmemStore, target: TmemStore, state_dir: Path
) -> None:
    path = saved(state_dir, store)
    os.chown(path, NOBODY, NOBODY)
    refused(path, target, f"owned by uid {NOBODY}, not by this daemon's user.*refusing")
    assert path.stat().st_uid == NOBODY


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_file_others_can_write_is_refused(
    store: TmemStore, target: TmemStore, state_dir: Path, mode: int
) -> None:
    path = saved(state_dir, store)
    path.chmod(mode)
    refused(path, target, f"writable by group or others \\(mode {mode:04o}\\)")


def test_a_symlink_is_refused_even_to_a_good_file(
    store: TmemStore, target: TmemStore, state_dir: Path
) -> None:
    good = saved(state_dir, store)
    good.rename(state_dir / "elsewhere")
    good.symlink_to(state_dir / "elsewhere")
    refused(good, target, "is a symbolic link, not a regular file; refusing to restore it")


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_without_blocking(target: TmemStore, state_dir: Path) -> None:
    path = state_dir / "tmemd.state"
    os.mkfifo(path, 0o600)
    refused(path, target, "is a FIFO, not a regular file")
    with StateDir(str(path)) as directory, pytest.raises(StateFileError, match="FIFO"):
        directory.open_saved()


def test_no_file_is_none(state_dir: Path) -> None:
    with StateDir(str(state_dir / "tmemd.state")) as directory:
        assert directory.open_saved() is None


# ----- start-up: the lock, stale temporary files -------------------------------------------
def test_a_second_daemon_cannot_take_the_same_state_file(state_dir: Path) -> None:
    path = str(state_dir / "tmemd.state")
    first = StateDir(path, lock=True)
    try:
        with pytest.raises(StateFileError, match="in use by another tmemd"):
            StateDir(path, lock=True)
        StateDir(str(state_dir / "other.state"), lock=True).close()
    finally:
        first.close()
    StateDir(path, lock=True).close()


def test_stale_temporary_files_are_removed_only_when_they_are_ours(
    state_dir: Path, tmp_path: Path
) -> None:
    ours = state_dir / ".tmemd.state.tmp-0123456789abcdef"
    ours.write_bytes(b"x" * 1000)
    theirs = state_dir / ".tmemd.state.tmp-fedcba9876543210"
    theirs.write_bytes(b"y")
    os.chown(theirs, NOBODY, NOBODY)
    (tmp_path / "target").write_bytes(b"z")
    link = state_dir / ".tmemd.state.tmp-00000000000000aa"
    link.symlink_to(tmp_path / "target")
    others = [".tmemd.state.tmp-short", "tmemd.state.tmp-123", ".other.state.tmp-0123456789abcdef",
              "tmemd.state.restored", ".tmemd.state.tmp-0123456789ABCDEF"]
    for name in others:
        (state_dir / name).write_bytes(b"keep")
    with StateDir(str(state_dir / "tmemd.state"), lock=True) as directory:
        assert directory.clean_stale_temporaries() == []  # the first pass was at opening
    assert not ours.exists()
    assert theirs.exists() and link.is_symlink() and (tmp_path / "target").exists()
    assert all((state_dir / name).read_bytes() == b"keep" for name in others)


# ----- renames -----------------------------------------------------------------------------
def test_retire_move_aside_and_remove_restored(store: TmemStore, state_dir: Path) -> None:
    path = saved(state_dir, store)
    data = path.read_bytes()
    with StateDir(str(path)) as directory:
        assert directory.retire() == str(path) + ".restored"
        assert not path.exists()
        assert directory.move_aside() is None
        saved(state_dir, store)
        first = directory.move_aside()
        saved(state_dir, store)
        second = directory.move_aside()
        assert first and second and first != second
        assert re.search(r"tmemd\.state\.discarded-\d{8}T\d{6}Z(-2)?$", first)
        assert Path(first).read_bytes() == data and Path(second).read_bytes() == data
        assert directory.remove_restored() is True
        assert directory.remove_restored() is False
    assert not path.exists() and not Path(str(path) + ".restored").exists()
