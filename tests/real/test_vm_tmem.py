"""`tmemh vm up --tmem` for real: a real `tmemd serve`, a real guest, both backends.

The VM is admitted by name over the daemon's control socket before it starts, its port
org.tmem.0 connects to the socket the admission returned, `vm up` reports the guest's tmem
swap, `vm status` shows the agent beside tmemd, and `vm down` dismisses it. Without a daemon,
`vm up --tmem` fails in one line and starts nothing; a VM that fails to boot after its
admission is dismissed again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import process_alive
from support.daemon import DaemonUnderTest, running_daemon

from tmemd.service.controlclient import ControlClient
from tmemh.image.manifest import ImageManifest

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="the guest image needs root")]


def tmemh(state: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmemh.cli", "vm", "--state-dir", str(state),
                           *args], capture_output=True, text=True, timeout=timeout, check=False)


def daemon_list(daemon: DaemonUnderTest) -> dict[str, Any]:
    with ControlClient(daemon.control) as client:
        listing: dict[str, Any] = client.call("list")
    return listing


def admitted(daemon: DaemonUnderTest) -> dict[str, dict[str, Any]]:
    return {vm["vm"]: vm for vm in daemon_list(daemon)["vms"] if vm["admitted"]}


def check_wired_vm(state: Path, daemon: DaemonUnderTest, name: str, up: str) -> dict[str, Any]:
    """What holds for a VM booted with --tmem on either backend; returns its record."""
    socket = Path(daemon.vm_socket_dir) / f"{name}.sock"
    assert f"{name}: admitted to tmemd at {daemon.control}; port org.tmem.0 -> {socket}" in up
    assert set(admitted(daemon)) == {name}
    assert admitted(daemon)[name]["owner"] in (0, None)  # QEMU runs as root here
    record = {r["name"]: r for r in json.loads(tmemh(state, "list", "--json").stdout)}[name]
    assert record["tmem"] == {"control": daemon.control, "socket": str(socket),
                              "port": "org.tmem.0", "owner_uid": 0,
                              "clients": {"org.tmem.0": name}}

    ports = tmemh(state, "ssh", name, "--", "tmem-agent", "ports")
    assert ports.returncode == 0 and "\torg.tmem.0" in ports.stdout, ports

    report = [line for line in up.splitlines() if line.startswith(f"{name}: tmem swap: ")]
    assert report == [f"{name}: tmem swap: active on /dev/nbd0 (tmemd connected)"], up
    swaps = tmemh(state, "ssh", name, "--", "cat", "/proc/swaps").stdout
    assert "/dev/nbd0" in swaps

    status = tmemh(state, "status", name, "--json")
    assert status.returncode == 0, status.stderr
    views = json.loads(status.stdout)
    assert views["vm"] == name
    assert views["tmemd"]["admission"]["admitted"] is True
    assert views["tmemd"]["admission"]["socket"] == str(socket)
    assert views["agent"]["phase"] == "ready" and views["agent"]["swap_active"] is True
    assert views["agent"]["tmem_connected"] is True  # its hello on the VM's own socket
    assert views["tmemd"]["session"]["connected"] is True
    assert views["tmemd"]["client"]["name"] == name
    assert views["tmemd"]["client"]["puts"] == views["agent"]["counters"]["puts"]
    table = tmemh(state, "status", name)
    assert table.returncode == 0 and "GUEST AGENT" in table.stdout and "TMEMD" in table.stdout
    return record


def check_down_dismisses(state: Path, daemon: DaemonUnderTest, name: str) -> None:
    down = tmemh(state, "down", name)
    assert down.returncode == 0, down.stderr
    assert f"{name}: dismissed from tmemd at {daemon.control}" in down.stdout
    assert f"`tmemd ctl forget {name}`" in down.stdout
    assert admitted(daemon) == {}
    assert not (Path(daemon.vm_socket_dir) / f"{name}.sock").exists()


def test_up_tmem_admits_wires_reports_and_down_dismisses(guest_image: ImageManifest,
                                                         vm_state: Path) -> None:
    with running_daemon() as daemon:
        up = tmemh(vm_state, "up", "tmem-q", "--backend", "qemu", "--memory", "512",
                   "--image", str(guest_image.directory), "--tmem", daemon.control)
        try:
            assert up.returncode == 0, up.stderr
            record = check_wired_vm(vm_state, daemon, "tmem-q", up.stdout)
            pid = int(record["handle"]["pid"])
        finally:
            if up.returncode == 0:
                check_down_dismisses(vm_state, daemon, "tmem-q")
        assert not process_alive(pid)
        help_text = tmemh(vm_state, "down", "--help").stdout
        assert "tmemd ctl forget" in " ".join(help_text.split())


def test_up_tmem_without_a_daemon_is_one_line_and_starts_nothing(guest_image: ImageManifest,
                                                                  vm_state: Path,
                                                                  tmp_path: Path) -> None:
    control = tmp_path / "none" / "control.sock"
    up = tmemh(vm_state, "up", "tmem-none", "--backend", "qemu",
               "--image", str(guest_image.directory), "--tmem", str(control))
    assert up.returncode == 1
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1, up.stderr
    assert f"no tmemd answers at {control}" in lines[0]
    assert f"tmemd serve --control {control}" in lines[0]
    assert not vm_state.exists()  # nothing was created, nothing is running (vm_state checks)


def test_a_vm_that_fails_to_boot_is_dismissed_again(guest_image: ImageManifest,
                                                    vm_state: Path) -> None:
    with running_daemon() as daemon:
        up = tmemh(vm_state, "up", "tmem-bad", "--backend", "qemu", "--image",
                   str(guest_image.directory), "--tmem", daemon.workdir.as_posix(),
                   "--kernel-arg", "init=/no/such/init")
        assert up.returncode == 1 and "VM launch failed" in up.stderr
        assert admitted(daemon) == {}
        assert json.loads(tmemh(vm_state, "list", "--json").stdout) == []


def test_libvirt_up_tmem_admits_for_qemus_user(guest_image: ImageManifest, vm_state: Path,
                                               libvirt_uri: str) -> None:
    with running_daemon() as daemon:
        up = tmemh(vm_state, "up", "tmem-lv", "--backend", "libvirt", "--connect", libvirt_uri,
                   "--memory", "512", "--image", str(guest_image.directory),
                   "--tmem", daemon.workdir.as_posix())  # the directory holding control.sock
        try:
            assert up.returncode == 0, up.stderr
            assert "tmem-lv: up (libvirt/" in up.stdout
            check_wired_vm(vm_state, daemon, "tmem-lv", up.stdout)
        finally:
            if up.returncode == 0:
                check_down_dismisses(vm_state, daemon, "tmem-lv")
