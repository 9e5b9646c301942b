"""Real failure paths: a guest that panics, an unreachable libvirt, a missing image.

Each must raise a clear error and leave nothing behind (no process, domain, overlay, record).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from tmemh.image.manifest import ImageManifest
from tmemh.vm import (
    BackendUnavailable,
    HostPortInUse,
    ImageMissing,
    VirtualMachine,
    VMLaunchFailure,
    VMSpec,
)
from tmemh.vm.libvirt_backend import LibvirtBackend
from tmemh.vm.machine import CONSOLE_TAIL_LINES
from tmemh.vm.render import domain_name
from tmemh.vm.state import StateDir

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and libvirt need root")]

UNREACHABLE_URI = "qemu+unix:///system?socket=/nonexistent/tmemh/libvirt-sock"


@pytest.mark.parametrize("backend", ["qemu", "libvirt"])
def test_a_panicking_guest_reports_its_console(backend: str, request: pytest.FixtureRequest,
                                               guest_image: ImageManifest,
                                               vm_state: Path) -> None:
    uri = request.getfixturevalue("libvirt_uri") if backend == "libvirt" else None
    spec = VMSpec(name=f"panic-{backend}", kernel_args=("init=/bin/false",))
    vm = VirtualMachine(spec, guest_image, backend=backend, uri=uri, state_dir=vm_state)
    with pytest.raises(VMLaunchFailure) as caught:
        vm.launch()
    failure = caught.value
    print(failure)
    assert "Kernel panic" in failure.console_tail
    assert "Kernel panic" in str(failure)
    assert len(failure.console_tail.splitlines()) <= CONSOLE_TAIL_LINES
    if backend == "qemu":
        assert failure.command[0] == "qemu-system-x86_64" and "init=/bin/false" in str(failure)
        assert failure.exit_code is not None
    else:
        assert "domain.xml" in str(failure)
        domain = domain_name(spec.name, vm_state / spec.name)
        assert LibvirtBackend(str(uri), domain)._lookup() is None
    assert StateDir(vm_state).load(spec.name) is None
    assert not (vm_state / spec.name / "disk.qcow2").exists()
    vm.shutdown()  # idempotent after a failed launch


def test_an_unreachable_libvirt_is_a_clear_error(guest_image: ImageManifest,
                                                 vm_state: Path) -> None:
    vm = VirtualMachine(VMSpec(name="nowhere"), guest_image, backend="libvirt",
                        uri=UNREACHABLE_URI, state_dir=vm_state)
    with pytest.raises(BackendUnavailable, match="cannot connect to libvirt at"):
        vm.launch()
    assert not vm_state.exists()


def test_a_missing_image_is_a_clear_error(guest_image: ImageManifest, tmp_path: Path,
                                          vm_state: Path) -> None:
    broken = tmp_path / "image"
    shutil.copytree(guest_image.directory, broken, ignore=shutil.ignore_patterns("*.qcow2"))
    image = ImageManifest.load(broken)
    vm = VirtualMachine(VMSpec(name="noimage"), image, backend="qemu", state_dir=vm_state)
    with pytest.raises(ImageMissing, match="rootfs.qcow2"):
        vm.launch()
    assert not vm_state.exists()


def test_a_guest_that_never_answers_times_out(guest_image: ImageManifest, vm_state: Path) -> None:
    """init=/bin/cat waits on the console forever: no panic, no sshd, QEMU keeps running."""
    spec = VMSpec(name="silent", kernel_args=("init=/bin/cat",))
    vm = VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state, boot_timeout=20)
    with pytest.raises(VMLaunchFailure, match="not reachable over SSH") as caught:
        vm.launch()
    assert caught.value.exit_code is None  # QEMU was still running; teardown stopped it
    assert "init=/bin/cat" in " ".join(caught.value.command)
    assert StateDir(vm_state).load(spec.name) is None


def test_a_taken_ssh_port_given_by_the_caller_is_a_clear_error(guest_image: ImageManifest,
                                                                vm_state: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = int(holder.getsockname()[1])
        vm = VirtualMachine(VMSpec(name="taken", ssh_port=port), guest_image, backend="qemu",
                            state_dir=vm_state)
        with pytest.raises(HostPortInUse, match=f"127.0.0.1:{port} for SSH is in use"):
            vm.launch()  # a port the caller chose is not replaced by another
    assert StateDir(vm_state).load("taken") is None
    assert not (vm_state / "taken" / "disk.qcow2").exists()
