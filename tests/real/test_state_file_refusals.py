"""Starts that must fail, against real ``tmemd serve`` processes: each fails fast with one
``tmemd: error:`` line, and leaves the state file and everything beside it as it was (the
daemon's lock file aside). Tests run as root; "another user" is uid 65534."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import running_daemon
from support.statefiles import (
    get_pages,
    make_state_file,
    page,
    put_pages,
    serve_fails,
    snapshot,
)

pytestmark = pytest.mark.real

NOBODY = 65534


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tmemd-"))  # mode 0700, ours: a good state directory
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def saved(workdir: Path) -> Path:
    """A good state file at ``workdir/state/tmemd.state`` (20 pages of vm saved-vm)."""
    (workdir / "state").mkdir(mode=0o700)
    state = workdir / "state" / "tmemd.state"
    make_state_file(workdir, state)
    return state


def refused_start(workdir: Path, state: Path, *args: str) -> str:
    """Start with ``state``: exit 1, one line; nothing in its directory changed."""
    before = snapshot(state.parent)
    code, line = serve_fails(workdir, "--state-file", str(state), *args)
    assert code == 1, line
    assert snapshot(state.parent) == before
    return line


def test_a_state_file_of_another_user_is_refused(workdir: Path, saved: Path) -> None:
    os.chown(saved, NOBODY, NOBODY)
    line = refused_start(workdir, saved)
    assert line == (f"tmemd: error: state file {saved} is owned by uid {NOBODY}, not by this"
                    f" daemon's user (uid 0); refusing to restore it")


def test_a_world_writable_state_file_is_refused(workdir: Path, saved: Path) -> None:
    saved.chmod(0o666)
    line = refused_start(workdir, saved)
    assert line.endswith(f"state file {saved} is writable by group or others (mode 0666);"
                         " refusing to restore it")


def test_a_symlink_at_the_state_path_is_refused_and_not_followed(
    workdir: Path, saved: Path
) -> None:
    good = saved.parent / "good.state"
    saved.rename(good)
    saved.symlink_to(good)
    line = refused_start(workdir, saved)
    assert line.endswith(f"state file {saved} is a symbolic link, not a regular file;"
                         " refusing to restore it")


def test_a_fifo_at_the_state_path_fails_fast(workdir: Path) -> None:
    """It used to hang the start (and ignore SIGTERM) reading the FIFO."""
    (workdir / "state").mkdir(mode=0o700)
    fifo = workdir / "state" / "tmemd.state"
    os.mkfifo(fifo, 0o600)
    line = refused_start(workdir, fifo)
    assert line.endswith(f"state file {fifo} is a FIFO, not a regular file;"
                         " refusing to restore it")


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_directory_others_can_write_is_refused(workdir: Path, mode: int) -> None:
    shared = workdir / "shared"
    shared.mkdir()
    shared.chmod(mode)
    line = refused_start(workdir, shared / "tmemd.state")
    assert line == (f"tmemd: error: state file directory {shared} is writable by group or"
                    f" others (mode {mode:04o}); use a directory that only this daemon's user"
                    " owns and can write (e.g. mode 0700)")
    assert list(shared.iterdir()) == []  # not even a lock file


def test_a_directory_of_another_user_is_refused(workdir: Path) -> None:
    theirs = workdir / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    line = refused_start(workdir, theirs / "tmemd.state")
    assert f"state file directory {theirs} is owned by uid {NOBODY}" in line


def test_a_parent_that_is_not_a_directory_and_a_state_path_that_is_one(workdir: Path) -> None:
    (workdir / "plain").write_text("")
    code, line = serve_fails(workdir, "--state-file", str(workdir / "plain" / "tmemd.state"))
    assert (code, line) == (1, f"tmemd: error: state file {workdir}/plain/tmemd.state:"
                               f" {workdir}/plain is not a directory")
    (workdir / "adir").mkdir()
    code, line = serve_fails(workdir, "--state-file", str(workdir / "adir"))
    assert (code, line) == (1, f"tmemd: error: state file {workdir}/adir is a directory")
    code, line = serve_fails(workdir, "--state-file", str(workdir / "missing" / "s"))
    assert code == 1 and line.endswith(f"directory {workdir}/missing does not exist")


def test_a_busy_metrics_port_is_one_line_and_the_state_file_stays(
    workdir: Path, saved: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = refused_start(workdir, saved, "--metrics-port", str(port))
    assert line == (f"tmemd: error: metrics port {port} on 127.0.0.1: Address already in use"
                    " (choose another --metrics-port, or 0 for none)")


def test_a_memory_limit_beyond_the_host_is_one_line_exit_2(workdir: Path, saved: Path) -> None:
    before = snapshot(saved.parent)
    code, line = serve_fails(workdir, "--state-file", str(saved), "--memory-limit", "64T")
    assert code == 2
    assert line.startswith("tmemd: error: memory_limit 64T (command line) is larger than this"
                           " host's memory (MemAvailable ")
    assert snapshot(saved.parent) == before


def test_a_failed_second_start_leaves_the_state_files_alone(workdir: Path, saved: Path) -> None:
    """A second daemon on the first one's socket used to restore and retire its own state
    file and then write an empty one over it; on the first one's state file it would have
    written over that too."""
    boot = b"first-vm".ljust(16, b".")
    first_state = workdir / "first" / "tmemd.state"
    first_state.parent.mkdir(mode=0o700)
    with running_daemon("--state-file", str(first_state), workdir=workdir) as first:
        pool = put_pages(first, "first-vm", boot, 30)
        # the first daemon's state file and socket: the lock stops it
        line = refused_start(workdir, first_state)
        assert line == (f"tmemd: error: state file {first_state} is in use by another tmemd"
                        " (it holds tmemd.state.lock)")
        assert not first_state.exists()
        # its own state file, the first one's sockets: refused before the file is touched
        line = refused_start(workdir, saved)
        assert line.endswith(f"control socket {workdir}/control.sock is in use: another"
                             " server is listening there")
        line = refused_start(workdir, saved, "--control", str(workdir / "other.sock"))
        assert line.endswith(f"VM socket {workdir}/vm.sock is in use: another server is"
                             " listening there")
        assert first.alive()
        assert first.stop() == 0
        first.args = ["--state-file", str(first_state)]
        first.start()
        assert get_pages(first, "first-vm", boot, pool, 30) == [page(n) for n in range(30)]
