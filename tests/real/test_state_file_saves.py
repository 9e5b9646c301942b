"""Saving and restoring with real ``tmemd serve`` processes when things go wrong: plants at
the old temporary name, a symlink at the state path, a kill during a save, a full disk at
shutdown (a small tmpfs), ``--discard-state``; and the format: same-filled pages stored
compactly, version 1 files still read."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import running_daemon
from support.statefiles import get_pages, make_state_file, page, put_pages, wait_for

from tmem_agent.channel import wire
from tmemd.service.statefile import HEADER, KIND_FILLED, KIND_PAGE, PAGE_HEAD, RECORD_HEAD

pytestmark = pytest.mark.real

NOBODY = 65534
BOOT = b"b" * 16
TEMP_NAME = re.compile(r"^\.tmemd\.state\.tmp-[0-9a-f]{16}$")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Sockets and log here; the state file in ``state/`` (mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="tmemd-"))
    (path / "state").mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if TEMP_NAME.match(p.name)]


def partly_written(directory: Path) -> bool:
    """A save is under way: its temporary file holds 4 MiB or more."""
    for name in temporaries(directory):
        try:
            if (directory / name).stat().st_size >= 4 << 20:
                return True
        except FileNotFoundError:  # renamed meanwhile: the save finished
            pass
    return False


def test_plants_at_the_old_temporary_name_have_no_effect(workdir: Path) -> None:
    """The save used to open ``<state>.tmp-<pid>`` without O_EXCL|O_NOFOLLOW: a planted file
    kept its planter (who then edited a page and fixed its CRC); a symlink made root write
    through it."""
    state = workdir / "state" / "tmemd.state"
    victim = workdir / "victim"
    victim.write_bytes(b"not yours")
    with running_daemon("--state-file", str(state), workdir=workdir) as daemon:
        pool = put_pages(daemon, "vm", BOOT, 10)
        planted = Path(f"{state}.tmp-{daemon.pid}")
        planted.write_bytes(b"planted")
        os.chown(planted, NOBODY, NOBODY)
        planted.chmod(0o666)
        assert daemon.stop() == 0
        assert planted.read_bytes() == b"planted" and planted.stat().st_uid == NOBODY
        assert state.stat().st_uid == 0 and state.stat().st_mode & 0o777 == 0o600
        daemon.start()
        link = Path(f"{state}.tmp-{daemon.pid}")
        link.symlink_to(victim)
        assert get_pages(daemon, "vm", BOOT, pool, 10) == [page(n) for n in range(10)]
        assert daemon.stop() == 0
        assert victim.read_bytes() == b"not yours" and link.is_symlink()
        daemon.start()
        assert get_pages(daemon, "vm", BOOT, pool, 10) == [page(n) for n in range(10)]


def test_a_symlink_put_at_the_state_path_is_never_followed(workdir: Path) -> None:
    state = workdir / "state" / "tmemd.state"
    victim = workdir / "victim"
    victim.write_bytes(b"not yours")
    with running_daemon("--state-file", str(state), workdir=workdir) as daemon:
        put_pages(daemon, "vm", BOOT, 10)
        state.symlink_to(victim)
        assert daemon.stop() == 0
    assert victim.read_bytes() == b"not yours"
    assert not state.is_symlink() and state.stat().st_size > 10 * wire.PAGE_SIZE


def test_a_kill_during_a_save_leaves_the_file_there_and_the_next_start_cleans_up(
    workdir: Path,
) -> None:
    """Whatever file is at the state path when a save starts survives a SIGKILL during the
    save (an operator put a saved file back, here); the next start removes the partial
    temporary file (it used to stay forever) and restores that file."""
    directory = workdir / "state"
    state = directory / "tmemd.state"
    good, good_pool = make_state_file(workdir, directory / "backup.state", "saved-vm", 20)
    with running_daemon("--state-file", str(state), workdir=workdir) as daemon:
        put_pages(daemon, "big-vm", BOOT, 40_000)
        state.write_bytes(good)
        state.chmod(0o600)
        os.kill(daemon.pid, signal.SIGTERM)
        wait_for(lambda: partly_written(directory), timeout=30, every=0.002)
        daemon.crash()
        (partial,) = temporaries(directory)
        assert state.read_bytes() == good
        daemon.start()
        assert temporaries(directory) == []
        assert f"removed {partial}" in daemon.log_text()
        got = get_pages(daemon, "saved-vm", b"saved-vm".ljust(16, b"."), good_pool, 20)
        assert got == [page(n) for n in range(20)]


@pytest.fixture
def small_tmpfs(workdir: Path) -> Iterator[Path]:
    """``workdir/state`` as a 2 MiB tmpfs (mode 0700), unmounted afterwards."""
    mount = workdir / "state"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_at_shutdown_keeps_every_page_and_the_daemon_serving(
    workdir: Path, small_tmpfs: Path
) -> None:
    """A failed save used to lose every page. Now the daemon says so, keeps its pages and
    serves again; the previous file stays; after the operator makes room, SIGTERM saves."""
    state = small_tmpfs / "tmemd.state"
    with running_daemon("--state-file", str(state), workdir=workdir) as daemon:
        pool = put_pages(daemon, "vm", BOOT, 100)
        assert daemon.stop() == 0
        daemon.start()  # restores: the file becomes tmemd.state.restored
        restored = Path(f"{state}.restored")
        previous = restored.read_bytes()
        put_pages(daemon, "vm", BOOT, 1000, pool=pool, start=100)  # 4 MB more: cannot fit
        os.kill(daemon.pid, signal.SIGTERM)
        wait_for(lambda: "serving again after the failed save" in daemon.log_text())
        assert "No space left on device; every page is kept in memory" in daemon.log_text()
        assert daemon.alive()
        assert sorted(p.name for p in small_tmpfs.iterdir()) == [
            "tmemd.state.lock", "tmemd.state.restored"]
        assert restored.read_bytes() == previous
        assert get_pages(daemon, "vm", BOOT, pool, 1100) == [page(n) for n in range(1100)]
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
        assert daemon.stop() == 0
        assert sorted(p.name for p in small_tmpfs.iterdir()) == [
            "tmemd.state", "tmemd.state.lock"]  # the old .restored went with the good save
        daemon.start()
        assert get_pages(daemon, "vm", BOOT, pool, 1100) == [page(n) for n in range(1100)]


def test_discard_state_moves_the_file_aside_and_starts_empty(workdir: Path) -> None:
    state = workdir / "state" / "tmemd.state"
    saved, pool = make_state_file(workdir, state, "vm", 5)
    with running_daemon("--state-file", str(state), "--discard-state",
                        workdir=workdir) as daemon:
        (aside,) = (workdir / "state").glob("tmemd.state.discarded-*")
        assert aside.read_bytes() == saved and not state.exists()
        assert f"--discard-state: starting empty; state file {state} moved to {aside}" in (
            daemon.log_text())
        got = get_pages(daemon, "vm", b"vm".ljust(16, b"."), pool, 0,
                        expect=wire.HelloStatus.FRESH)
        assert got == []
        assert daemon.stop() == 0
    assert state.exists() and aside.read_bytes() == saved


def test_same_filled_pages_are_stored_compactly(workdir: Path) -> None:
    """100,000 zero pages used to make a 414 MB state file (each a whole page)."""
    state = workdir / "state" / "tmemd.state"
    zero = bytes(wire.PAGE_SIZE)
    with running_daemon("--state-file", str(state), workdir=workdir) as daemon:
        pool = put_pages(daemon, "zeros", BOOT, 100_000, make=lambda n: zero)
        assert daemon.stop() == 0
        assert state.stat().st_size < 5_000_000
        daemon.start()
        got = get_pages(daemon, "zeros", BOOT, pool, 100_000)
        assert got.count(zero) == 100_000


def as_version_1(data: bytes) -> bytes:
    """A version 2 state file rewritten as version 1 wrote it: every same-filled page whole."""
    out = bytearray(HEADER.pack(b"TMEMSTAT", 1, 0, wire.PAGE_SIZE))
    out += struct.pack("<I", zlib.crc32(out))
    offset = HEADER.size + 4
    while offset < len(data):
        kind, length = RECORD_HEAD.unpack_from(data, offset)
        payload = data[offset + RECORD_HEAD.size : offset + RECORD_HEAD.size + length]
        offset += RECORD_HEAD.size + length + 4
        if kind == KIND_FILLED:
            kind = KIND_PAGE
            payload = payload[: PAGE_HEAD.size] + payload[PAGE_HEAD.size :] * wire.PAGE_SIZE
        head = RECORD_HEAD.pack(kind, len(payload))
        out += head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))
    return bytes(out)


def test_a_version_1_state_file_still_restores(workdir: Path) -> None:
    state = workdir / "state" / "tmemd.state"
    pages = [page(n) if n % 3 else bytes([n % 256]) * wire.PAGE_SIZE for n in range(60)]
    with running_daemon("--state-file", str(state), workdir=workdir) as daemon:
        pool = put_pages(daemon, "old", BOOT, 60, make=pages.__getitem__)
        assert daemon.stop() == 0
        old = as_version_1(state.read_bytes())
        assert len(old) > 60 * wire.PAGE_SIZE
        state.write_bytes(old)
        daemon.start()
        assert get_pages(daemon, "old", BOOT, pool, 60) == pages
        assert Path(f"{state}.restored").read_bytes() == old
