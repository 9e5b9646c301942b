"""VirtualMachine without booting: run states, bad input, and the launch failure report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tmemh.image.manifest import ImageManifest
from tmemh.vm import (
    BackendUnavailable,
    ImageMissing,
    RunState,
    VirtualMachine,
    VMError,
    VMLaunchFailure,
    VMSpec,
    VMStateError,
    libvirt_backend,
)
from tmemh.vm.libvirt_backend import LibvirtBackend
from tmemh.vm.machine import read_console_tail, resolve_backend


def missing_image(tmp_path: Path) -> ImageManifest:
    return ImageManifest(directory=tmp_path, key="k", kernel=tmp_path / "vmlinuz",
                         initramfs=tmp_path / "initrd.gz", rootfs=tmp_path / "rootfs.qcow2",
                         kernel_version="6.1", cmdline="console=ttyS0", ssh_user="root",
                         ssh_private_key=tmp_path / "id", ssh_public_key=tmp_path / "id.pub")


def test_missing_image_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    vm = VirtualMachine(VMSpec(name="m"), missing_image(tmp_path), backend="qemu",
                        state_dir=state)
    with pytest.raises(ImageMissing, match="vmlinuz.*tmemh image build"):
        vm.launch()
    assert vm.state is RunState.FAILED
    assert not state.exists()
    vm.shutdown()
    assert vm.state is RunState.SHUT_DOWN


def test_calls_in_the_wrong_state_are_refused(tmp_path: Path) -> None:
    vm = VirtualMachine(VMSpec(name="s"), missing_image(tmp_path), state_dir=tmp_path)
    with pytest.raises(VMStateError, match="running"):
        vm.block_stats()
    with pytest.raises(VMStateError):
        vm.ssh()
    vm.shutdown()
    with pytest.raises(VMStateError, match="created"):
        vm.launch()


def test_unknown_backend_and_misplaced_uri_are_refused() -> None:
    with pytest.raises(VMError, match="unknown backend"):
        resolve_backend("xen", None)
    with pytest.raises(VMError, match="only applies to the libvirt"):
        resolve_backend("qemu", "qemu:///system")


def test_launch_failure_names_command_exit_code_and_console() -> None:
    failure = VMLaunchFailure("the VM stopped while booting", ["qemu-system-x86_64", "-m", "512"],
                              1, "line one\nKernel panic - not syncing: boom")
    text = str(failure)
    assert "qemu-system-x86_64 -m 512" in text and "exit code: 1" in text
    assert text.endswith("Kernel panic - not syncing: boom")
    assert "(serial console is empty)" in str(VMLaunchFailure("no", [], None, ""))


def test_console_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(b"line %d\r\n" % i for i in range(100)))
    tail = read_console_tail(log, 40)
    assert tail.splitlines() == [f"line {i}" for i in range(60, 100)]
    assert read_console_tail(tmp_path / "none") == ""


def test_auto_backend_connects_once_and_keeps_the_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = libvirt_backend.open_connection

    def counting_open(uri: str) -> Any:
        opened.append(uri)
        return real_open(uri)

    monkeypatch.setattr(libvirt_backend, "open_connection", counting_open)
    backend = resolve_backend("auto", "test:///default")  # libvirt's in-process test driver
    assert isinstance(backend, LibvirtBackend)
    assert opened == ["test:///default"]  # the backend holds the connection auto opened
    backend.connect()
    assert opened == ["test:///default"]


def test_auto_backend_with_an_unreachable_uri_is_an_error() -> None:
    with pytest.raises(BackendUnavailable, match="nonexistent"):
        resolve_backend("auto", "qemu+unix:///system?socket=/nonexistent/libvirt-sock")
