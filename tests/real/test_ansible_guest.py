"""guest.yml for real: the agent deployed into a running guest over SSH, and a second run
that changes nothing.

The guest is the harness's image booted with ``tmemh vm up --tmem`` beside a private tmemd: its
init already runs the agent the image carries. The first run of guest.yml therefore upgrades
a running agent (the installed copy is unknown to the role): it replaces the files, turns the
swap off, stops the init's agent and starts its own; afterwards ``tmem-agent status`` answers
with swap on /dev/nbd0 and tmemd connected. The second run reports no change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import DaemonUnderTest, running_daemon
from support.playbook import run_playbook

from tmemh.image.manifest import ImageManifest

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="the guest image needs root")]

NAME = "ansible-guest"


def tmemh(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmemh.cli", "vm", "--state-dir", str(state),
                           *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def wired_guest(guest_image: ImageManifest, vm_state: Path) -> Iterator[DaemonUnderTest]:
    """The image booted with --tmem beside a private tmemd; down again afterwards."""
    with running_daemon() as daemon:
        up = tmemh(vm_state, "up", NAME, "--backend", "qemu", "--memory", "512",
                   "--image", str(guest_image.directory), "--tmem", daemon.control)
        try:
            assert up.returncode == 0, up.stderr
            yield daemon
        finally:
            if up.returncode == 0:
                down = tmemh(vm_state, "down", NAME)
                assert down.returncode == 0, down.stderr


def test_guest_playbook_upgrades_the_running_agent_then_changes_nothing(
        wired_guest: DaemonUnderTest, vm_state: Path, tmp_path: Path) -> None:
    ssh_config = tmp_path / "ssh_config"
    config = tmemh(vm_state, "ssh-config", NAME)
    assert config.returncode == 0, config.stderr
    ssh_config.write_text(config.stdout)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"tmem_guests": {"hosts": {NAME: {
        "ansible_ssh_common_args": f"-F {ssh_config}",
        "ansible_python_interpreter": "/usr/bin/python3"}}}}))
    before = tmemh(vm_state, "ssh", NAME, "--", "cat", "/var/lib/tmem-agent/swap-fallback.lock")
    init_agent = int(before.stdout.split()[0])

    first, output = run_playbook("guest.yml", inventory, tmp_path, timeout=900)
    assert first[NAME]["failures"] == 0 and first[NAME]["changed"] > 0, output[-4000:]

    status = tmemh(vm_state, "ssh", NAME, "--", "tmem-agent", "status")
    assert status.returncode == 0, status.stderr
    agent = json.loads(status.stdout)
    assert agent["ready"] and agent["swap_active"] and agent["tmem_connected"], agent
    swaps = tmemh(vm_state, "ssh", NAME, "--", "cat", "/proc/swaps").stdout
    assert "/dev/nbd0" in swaps
    # the agent now serving is the role's (supervised, with a PID file), not the init's
    after = tmemh(vm_state, "ssh", NAME, "--", "cat", "/var/lib/tmem-agent/swap-fallback.lock",
                  "/run/tmem-agent.pid")
    serving, supervisor = (int(word) for word in after.stdout.split())
    assert serving != init_agent
    parent = tmemh(vm_state, "ssh", NAME, "--",
                   f"awk '/^PPid:/ {{print $2}}' /proc/{serving}/status")
    assert int(parent.stdout) == supervisor
    installed = tmemh(vm_state, "ssh", NAME, "--", "cat", "/opt/tmem-agent/.installed")
    assert installed.returncode == 0 and installed.stdout.strip()

    second, output = run_playbook("guest.yml", inventory, tmp_path, timeout=900)
    assert second[NAME]["changed"] == 0, output[-4000:]
    assert second[NAME]["failures"] == 0
