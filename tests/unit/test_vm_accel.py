"""The accelerator probe, with a fake QEMU runner: KVM only when a KVM guest really booted."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tmemh.vm import accel
from tmemh.vm.accel import TCG_TIMEOUT_SCALE, choose_accelerator


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    accel.reset_probe_cache()
    yield
    accel.reset_probe_cache()


@pytest.fixture
def kvm_device(tmp_path: Path) -> Path:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    return device


class FakeQemu:
    """Stands in for subprocess.run: returns a canned result or raises."""

    def __init__(self, stdout: str = "", returncode: int = 0, raises: Exception | None = None):
        self.stdout, self.returncode, self.raises = stdout, returncode, raises
        self.calls: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(command)
        assert kwargs["timeout"] == accel.PROBE_TIMEOUT_S
        if self.raises:
            raise self.raises
        return subprocess.CompletedProcess(command, self.returncode, self.stdout, "boom")


def test_working_kvm_is_chosen_and_cached(kvm_device: Path) -> None:
    qemu = FakeQemu(stdout="[ 0.5] Kernel panic - not syncing: VFS: Unable to mount root fs")
    first = choose_accelerator(Path("/k"), runner=qemu, kvm_device=kvm_device, environ={})
    again = choose_accelerator(Path("/k"), runner=qemu, kvm_device=kvm_device, environ={})
    assert first.name == "kvm" and first.timeout_scale == 1.0 and again is first
    assert len(qemu.calls) == 1
    assert ["-accel", "kvm"] == qemu.calls[0][1:3] and "/k" in qemu.calls[0]


def test_hanging_kvm_falls_back_to_tcg(kvm_device: Path) -> None:
    qemu = FakeQemu(raises=subprocess.TimeoutExpired(["qemu"], accel.PROBE_TIMEOUT_S))
    choice = choose_accelerator(Path("/k"), runner=qemu, kvm_device=kvm_device, environ={})
    assert choice.name == "tcg" and "did not reach" in choice.reason
    assert choice.scaled(10.0) == 10.0 * TCG_TIMEOUT_SCALE


def test_crashing_kvm_falls_back_to_tcg(kvm_device: Path) -> None:
    qemu = FakeQemu(returncode=-6)
    choice = choose_accelerator(Path("/k"), runner=qemu, kvm_device=kvm_device, environ={})
    assert choice.name == "tcg" and "exited -6" in choice.reason


def test_missing_device_skips_the_probe(tmp_path: Path) -> None:
    qemu = FakeQemu(stdout="Kernel panic")
    choice = choose_accelerator(Path("/k"), runner=qemu, kvm_device=tmp_path / "none",
                                environ={})
    assert choice.name == "tcg" and qemu.calls == []


def test_environment_forces_the_choice(kvm_device: Path) -> None:
    qemu = FakeQemu(stdout="Kernel panic")
    forced = choose_accelerator(Path("/k"), runner=qemu, kvm_device=kvm_device,
                                environ={"TMEMH_ACCEL": "tcg"})
    assert forced.name == "tcg" and qemu.calls == []
    with pytest.raises(ValueError, match="TMEMH_ACCEL"):
        choose_accelerator(Path("/k"), runner=qemu, kvm_device=kvm_device,
                           environ={"TMEMH_ACCEL": "hvf"})
