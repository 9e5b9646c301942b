"""The ``tmemh vm`` command line for real: the VM outlives `vm up`, later commands find it.

Also: a VM whose QEMU died is cleaned up by the next `vm list`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import process_alive

from tmemh.image.manifest import ImageManifest

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="the guest image needs root")]


def tmemh(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmemh.cli", "vm", "--state-dir", str(state),
                           *args], capture_output=True, text=True, timeout=timeout, check=False)


def up(state: Path, image: ImageManifest, name: str) -> dict:
    result = tmemh(state, "up", name, "--backend", "qemu", "--memory", "512",
                   "--image", str(image.directory))
    assert result.returncode == 0, result.stderr
    assert f"{name}: up (qemu/" in result.stdout
    listing = tmemh(state, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    records = {r["name"]: r for r in json.loads(listing.stdout)}
    return records[name]


def test_up_ssh_list_console_diagnose_down(guest_image: ImageManifest, vm_state: Path) -> None:
    record = up(vm_state, guest_image, "cli-vm")
    pid = int(record["handle"]["pid"])
    try:
        assert process_alive(pid)  # QEMU outlived `vm up`

        ran = tmemh(vm_state, "ssh", "cli-vm", "--", "uname", "-r")
        assert ran.returncode == 0 and ran.stdout.strip() == guest_image.kernel_version
        assert tmemh(vm_state, "ssh", "cli-vm", "--", "exit 7").returncode == 7

        listed = tmemh(vm_state, "list")
        assert "cli-vm" in listed.stdout and f"pid {pid}" in listed.stdout

        assert "TMEM-GUEST-READY" in tmemh(vm_state, "console", "cli-vm").stdout
        assert "Show Blocked State" in tmemh(vm_state, "diagnose", "cli-vm", "--keys", "w").stdout

        disk = tmemh(vm_state, "disk", "cli-vm", "--bps", "3000000")
        assert disk.returncode == 0 and "throttle: 3000000 B/s" in disk.stdout

        again = tmemh(vm_state, "up", "cli-vm", "--backend", "qemu",
                      "--image", str(guest_image.directory))
        assert again.returncode == 1 and "already running" in again.stderr
        assert process_alive(pid)
    finally:
        down = tmemh(vm_state, "down", "cli-vm")
    assert down.returncode == 0, down.stderr
    assert not process_alive(pid)
    assert not Path(record["overlay"]).exists()
    assert json.loads(tmemh(vm_state, "list", "--json").stdout) == []
    gone = tmemh(vm_state, "down", "cli-vm")
    assert gone.returncode == 1 and "no running VM named 'cli-vm'" in gone.stderr


def test_a_dead_vm_is_cleaned_up_by_list(guest_image: ImageManifest, vm_state: Path) -> None:
    record = up(vm_state, guest_image, "doomed")
    pid = int(record["handle"]["pid"])
    os.kill(pid, signal.SIGKILL)  # the QEMU this test started
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(tmemh(vm_state, "list", "--json").stdout) == []
    assert not Path(record["overlay"]).exists()
    assert not (vm_state / "doomed" / "vm.json").exists()


def test_bad_input_is_refused_before_anything_starts(tmp_path: Path, vm_state: Path) -> None:
    missing = tmemh(vm_state, "up", "x", "--backend", "qemu", "--image", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no image manifest" in missing.stderr
    bad_name = tmemh(vm_state, "up", "../x", "--backend", "qemu")
    assert bad_name.returncode == 2 and "invalid VM name" in bad_name.stderr
    bad_channel = tmemh(vm_state, "up", "x", "--channel", "nopath")
    assert bad_channel.returncode == 2 and "NAME=PATH" in bad_channel.stderr
    shell = tmemh(vm_state, "ssh", "x")  # no command: an interactive shell, but no such VM
    assert shell.returncode == 1 and "no running VM named 'x'" in shell.stderr
    assert not vm_state.exists()
