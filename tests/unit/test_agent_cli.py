"""The ``tmem-agent`` command line, run here (it is standard library only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tmem_agent import cli
from tmem_agent.channel import ports


def test_ports_lists_sysfs_virtio_ports(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for port, name in (("vport1p1", "org.tmem.0"), ("vport1p2", "org.qemu.guest_agent.0")):
        (tmp_path / port).mkdir()
        (tmp_path / port / "name").write_text(name + "\n")
    monkeypatch.setattr(ports, "SYSFS_PORTS", str(tmp_path / "*"))
    assert ports.virtio_ports() == [("/dev/vport1p1", "org.tmem.0"),
                                    ("/dev/vport1p2", "org.qemu.guest_agent.0")]
    assert ports.find_port("org.tmem.0") == "/dev/vport1p1"
    assert ports.find_port("missing") is None


def test_pagecheck_arguments_are_passed_through_and_checked() -> None:
    done = subprocess.run([sys.executable, "-m", "tmem_agent.cli", "pagecheck", "--batch", "999"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "batch" in done.stderr


def test_unknown_subcommand_is_an_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2
