"""VMSpec validation: bad values are refused before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemh.vm import ChannelSpec, DiskThrottle, InvalidVMSpec, VMSpec


def test_defaults_are_a_small_guest() -> None:
    spec = VMSpec(name="guest-1")
    assert (spec.memory_mib, spec.vcpus, spec.ssh_port, spec.disk_size_mib) == (512, 1, None, None)
    assert spec.throttle.unlimited


@pytest.mark.parametrize("kwargs", [
    {"name": ""}, {"name": "has space"}, {"name": "../escape"}, {"name": "x" * 64},
    {"name": "ok", "memory_mib": 16}, {"name": "ok", "vcpus": 0}, {"name": "ok", "vcpus": 65},
    {"name": "ok", "ssh_port": 70000}, {"name": "ok", "disk_size_mib": 0},
    {"name": "ok", "memory_mib": True}, {"name": "ok", "kernel_args": ("two words",)},
    {"name": "ok", "kernel_args": ("",)}, {"name": "ok", "kernel_args": ("a='b'",)},
])
def test_invalid_specs_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidVMSpec):
        VMSpec(**kwargs)


def test_channels_must_have_unique_names_and_paths(tmp_path: Path) -> None:
    a = ChannelSpec("org.tmem.0", tmp_path / "a.sock")
    with pytest.raises(InvalidVMSpec, match="unique"):
        VMSpec(name="x", channels=(a, ChannelSpec("org.tmem.0", tmp_path / "b.sock")))
    with pytest.raises(InvalidVMSpec, match="distinct"):
        VMSpec(name="x", channels=(a, ChannelSpec("org.tmem.1", tmp_path / "a.sock")))


@pytest.mark.parametrize("name,path,mode", [
    ("bad name", "/tmp/a.sock", "server"),
    ("ok", "relative.sock", "server"),
    ("ok", "/tmp/" + "x" * 120, "server"),
    ("ok", "/tmp/a.sock", "listen"),
])
def test_invalid_channels_are_refused(name: str, path: str, mode: str) -> None:
    with pytest.raises(InvalidVMSpec):
        ChannelSpec(name, Path(path), mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("bps,iops", [(-1, 0), (0, -5), (1.5, 0)])
def test_invalid_throttle_is_refused(bps: object, iops: object) -> None:
    with pytest.raises(InvalidVMSpec):
        DiskThrottle(bps, iops)  # type: ignore[arg-type]
