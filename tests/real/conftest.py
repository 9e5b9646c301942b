"""Fixtures shared by the real tests: the guest image, a private libvirtd, VM state dirs.

``vm_state`` also guards against leftovers: after the test, no process may still name the
test's state directory on its command line (a QEMU the test started and failed to stop).
Such a process is killed by its PID and the test fails.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tmemh.image.build import build_image
from tmemh.image.manifest import ImageManifest


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def guest_image() -> ImageManifest:
    """The guest image for the current inputs (built on first use, then cached)."""
    return build_image()


@pytest.fixture(scope="module")
def libvirt_uri() -> Iterator[str]:
    """A libvirt daemon to talk to: the running one, or a private one started for the module
    (starting one takes well under a second once libvirt has cached QEMU's capabilities)."""
    if os.geteuid() != 0:
        pytest.skip("starting libvirtd needs root")
    from tmemh.libvirtd import PrivateLibvirtd

    with PrivateLibvirtd() as uri:
        yield uri


@pytest.fixture
def vm_state(tmp_path: Path) -> Iterator[Path]:
    """A private VM state directory; fails the test if a process using it survives."""
    state = tmp_path / "vms"
    yield state
    leftovers = processes_naming(str(state))
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert leftovers == [], f"processes left running: {leftovers}"
