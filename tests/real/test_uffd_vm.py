"""``tmem-agent memhog`` in a real guest: a 256 MiB TCG guest fills and verifies a 256 MiB
userfaultfd region that may keep only 64 MiB resident, the rest in a tmem pool of an admitted
``tmemd serve`` reached over virtio-serial (the VM's port connects to the socket the daemon made
for it, as the demo's does). Every page must verify; the figures, faults per second among them,
are printed for the report.

And a tool that opens its port late, or while the daemon's end is away, still gets through:
QEMU connects the port's socket when the VM starts, and tmemd keeps that silent stream open
past its hello timeout (the timeout counts from the first byte on a VM's own socket); and
memhog, finding nobody on the host side (the VM dismissed, its socket gone), opens the port
again until the daemon is back."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from support.daemon import running_daemon

from tmem_agent.tools.memhog import UPDATE_SHARE
from tmemd.service.controlclient import ControlClient
from tmemh.image.manifest import ImageManifest
from tmemh.vm import ChannelSpec, VirtualMachine, VMSpec

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root"),
              pytest.mark.timeout(900)]

VM = "uffd-vm"
PORT = "org.tmem.uffd"  # not org.tmem.0: the image would start its swap agent there
MEMHOG = f"tmem-agent memhog --size 256M --resident 64M --verify --port {PORT} --vm {VM}"


def test_memhog_verifies_through_a_region_a_quarter_resident_in_a_guest(
    guest_image: ImageManifest, vm_state: Path
) -> None:
    with running_daemon("--memory-limit", "512M") as daemon:
        spec = VMSpec(name=VM, memory_mib=256,
                      channels=(ChannelSpec(PORT, daemon.admit(VM), "connect"),))
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm:
            done = vm.run(MEMHOG, timeout=600)
            assert done.exit_code == 0, f"{done.stderr}\n{done.stdout[-2000:]}"
            result = json.loads(done.stdout)
            status = json.loads(vm.run("tmem-agent status", timeout=60, check=True).stdout)
            with ControlClient(daemon.control) as control:
                view = control.call("stats", client=VM)["clients"][0]
        assert daemon.alive()
    verdict = result["verify"]
    assert verdict["passed"] and verdict["checked"] == 65536 + 65536 // UPDATE_SHARE, verdict
    assert result["lost_pages"] == 0 and result["puts_refused"] == 0
    assert result["resident_budget_pages"] == 16384
    assert result["resident_max"] <= 16384 + 16  # a fault's fill above the budget at most
    assert result["puts"] >= 65536 - 16384 and result["gets"] >= 65536 - 16384
    assert result["daemon"]["compression_ratio"] > 1.6  # realistic, not a pattern
    assert view["name"] == VM and view["puts"] == result["puts"]  # as the admitted VM
    [published] = status["uffd"]["processes"]  # no swap agent here, memhog's counters only
    assert published["running"] is False and "no agent answers" in status["agent"]
    assert status["uffd"]["totals"]["faults"] == result["faults"]
    phases = {name: (p["seconds"], p["faults_per_s"], p["pages_per_s"])
              for name, p in result["phases"].items()}
    print(f"\nguest memhog 256M/64M: {result['faults']} faults, {result['faults_per_s']} "
          f"faults/s, {result['pages_per_s']} pages/s; per phase (s, faults/s, pages/s) "
          f"{phases}; tmemd ratio {result['daemon']['compression_ratio']}")


def test_a_late_memhog_gets_through_the_port_while_its_host_side_comes_and_goes(
    guest_image: ImageManifest, vm_state: Path
) -> None:
    hello_timeout = 5  # the guest boots for far longer than this before memhog runs
    with running_daemon("--hello-timeout", str(hello_timeout)) as daemon:
        spec = VMSpec(name=VM, memory_mib=192,
                      channels=(ChannelSpec(PORT, daemon.admit(VM), "connect"),))
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm:
            time.sleep(hello_timeout + 1)  # booted, and QEMU's stream older than the timeout
            late = vm.run(f"{SMALL_MEMHOG} 2>/tmp/late.err", timeout=300)
            assert late.exit_code == 0, late.stdout + vm.run("cat /tmp/late.err").stdout
            daemon.dismiss(VM)  # QEMU's stream closed, its socket gone: nobody on that side
            vm.run(f"{{ {SMALL_MEMHOG} >/tmp/away.json 2>/tmp/away.err; echo $? >/tmp/away.rc; }}"
                   " </dev/null >/dev/null 2>&1 &", timeout=60, check=True)
            time.sleep(4)
            daemon.admit(VM)  # QEMU connects again within a second or so
            rc = vm.run("for i in $(seq 300); do test -s /tmp/away.rc && break; sleep 1; done;"
                        " cat /tmp/away.rc", timeout=360).stdout.strip()
            away_err = vm.run("cat /tmp/away.err", timeout=60).stdout
            away = json.loads(vm.run("cat /tmp/away.json", timeout=60).stdout or "{}")
        log = daemon.log_text()
    assert "no hello in" not in log  # the silent stream of the VM's start was kept
    assert json.loads(late.stdout)["verify"]["passed"]
    assert rc == "0" and away["verify"]["passed"], away_err
    assert "opening it again" in away_err  # it met the missing host side, and waited it out


SMALL_MEMHOG = f"tmem-agent memhog --size 16M --resident 4M --verify --port {PORT} --vm {VM}"
