"""The directory of admitted VMs' sockets, and socket owners, checked before anything listens."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from tmemd.service.vmsockets import AdmissionError, VmSockets, prepare_directory, resolve_owner


def test_a_missing_directory_is_made_0711_and_an_own_one_is_set_to_it(tmp_path: Path) -> None:
    made = tmp_path / "run" / "vms"
    prepare_directory(str(made))
    assert stat.S_IMODE(made.stat().st_mode) == 0o711
    made.chmod(0o777)  # ours, but open to all: made private again
    prepare_directory(str(made))
    assert stat.S_IMODE(made.stat().st_mode) == 0o711


def test_a_symlink_a_file_or_someone_elses_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(AdmissionError, match="not a directory"):
        prepare_directory(str(link))
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(AdmissionError, match="not a directory"):
        prepare_directory(str(plain))
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o755)
        os.chown(foreign, 65534, -1)
        with pytest.raises(AdmissionError, match="belongs to uid 65534"):
            prepare_directory(str(foreign))
        assert stat.S_IMODE(foreign.stat().st_mode) == 0o755  # left as it was


def test_owners_are_names_or_uids() -> None:
    assert resolve_owner(None) is None
    assert resolve_owner("root") == 0
    assert resolve_owner("1234") == 1234 and resolve_owner(5) == 5
    for bad in ("no-such-user-anywhere", -1, True, 2**40):
        with pytest.raises(AdmissionError):
            resolve_owner(bad)  # type: ignore[arg-type]


def test_a_failed_listen_leaves_nothing_behind(tmp_path: Path) -> None:
    directory = tmp_path / "vms"
    directory.mkdir(mode=0o711)
    taken = directory / "busy.sock"
    taken.write_text("not a socket")

    async def main() -> None:
        sockets = VmSockets(str(directory), lambda vm: asyncio.Protocol)
        with pytest.raises(AdmissionError, match="not a socket"):
            await sockets.listen("busy", None)
        assert taken.read_text() == "not a socket" and len(sockets) == 0
        long_name = "x" * 63
        deep = VmSockets(str(tmp_path / ("d" * 60)), lambda vm: asyncio.Protocol)
        with pytest.raises(AdmissionError, match="longer than 107 bytes"):
            await deep.listen(long_name, None)
        path = await sockets.listen("fine", None)
        assert sockets.listening("fine") and stat.S_ISSOCK(os.lstat(path).st_mode)
        server = sockets.stop("fine")
        assert server is not None and not os.path.exists(path)
        await server.wait_closed()

    asyncio.run(main())
