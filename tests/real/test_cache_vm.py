"""The disk cache in a real guest: a 256 MiB TCG guest with a throttled data disk (/dev/vdb)
runs ``tmem-agent cache`` over it, reaching an admitted ``tmemd serve`` over its own port
(not ``org.tmem.0``: the image would start its swap agent there, and one VM has one stream).
ext4 on /dev/nbd1: a tree written, the guest's page cache dropped, every file read back and
checked, mostly from tmem; files overwritten, truncated, deleted and rewritten between reads,
every read the new contents; ``fsck.ext4 -f`` clean at the end."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support.daemon import running_daemon

from tmemh.image.manifest import ImageManifest
from tmemh.vm import ChannelSpec, DataDisk, DiskThrottle, VirtualMachine, VMSpec

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root"),
              pytest.mark.timeout(1500)]

VM = "cache-vm"
PORT = "org.tmem.cache"
MiB = 1 << 20
STATUS = "tmem-agent status --socket /run/tmem-agent/cache-cache.sock"


def counters(vm: VirtualMachine) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(vm.run(STATUS, timeout=120, check=True).stdout)
    return status


def test_ext4_on_the_cache_rereads_from_tmem_and_stays_coherent(
    guest_image: ImageManifest, vm_state: Path
) -> None:
    with running_daemon("--memory-limit", "512M") as daemon:
        spec = VMSpec(name=VM, memory_mib=256,
                      channels=(ChannelSpec(PORT, daemon.admit(VM), "connect"),),
                      data_disk=DataDisk(256, throttle=DiskThrottle(8 * MiB, 0)))
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm:
            vm.run(f"nohup tmem-agent cache --disk /dev/vdb --device /dev/nbd1 --port-name "
                   f"{PORT} --vm {VM} > /var/log/tmem-cache.log 2>&1 &", check=True)
            deadline = time.monotonic() + 300
            while vm.run("test -f /run/tmem-agent/cache-cache.ready").exit_code != 0:
                log = vm.run("tail -20 /var/log/tmem-cache.log").stdout
                assert time.monotonic() < deadline and "FAILED" not in log, log
                time.sleep(2)
            vm.run("mkfs.ext4 -q /dev/nbd1 && mkdir -p /mnt/data && mount /dev/nbd1 /mnt/data"
                   " && cp -a /usr/lib/python3.11 /mnt/data/tree && sync", timeout=900,
                   check=True)
            vm.run("cd /mnt/data && find tree -type f -print0 | xargs -0 sha256sum > /sums",
                   timeout=600, check=True)
            before = counters(vm)
            vm.run("echo 3 > /proc/sys/vm/drop_caches", check=True)
            started = time.monotonic()
            vm.run("cd /mnt/data && sha256sum --quiet -c /sums", timeout=900, check=True)
            reread_s = time.monotonic() - started
            after = counters(vm)

            # coherency: overwrite, truncate, delete and rewrite between reads
            vm.run("cd /mnt/data/tree && for f in $(find . -name '*.py' | head -200); do "
                   "sha256sum $f | cut -c1-64 > $f.new; mv $f.new $f; done; "
                   "find . -name '*.pyc' | head -100 | xargs truncate -s 100; "
                   "find . -name '*.txt' | xargs rm -f; "
                   "cp -a /usr/lib/python3.11/json /mnt/data/tree/json2 && sync", timeout=900,
                   check=True)
            vm.run("cd /mnt/data && find tree -type f -print0 | xargs -0 sha256sum > /sums2",
                   timeout=600, check=True)
            vm.run("echo 3 > /proc/sys/vm/drop_caches", check=True)
            vm.run("cd /mnt/data && sha256sum --quiet -c /sums2", timeout=900, check=True)
            vm.run("umount /mnt/data", timeout=300, check=True)
            fsck = vm.run("fsck.ext4 -f -n /dev/nbd1", timeout=600)
            final = counters(vm)
            vm.run("nbd-client -d /dev/nbd1", timeout=60)
    assert fsck.exit_code == 0, fsck.stdout + fsck.stderr
    b, a, f = before["counters"], after["counters"], final["counters"]
    hits, disk = a["hits"] - b["hits"], a["disk_reads"] - b["disk_reads"]
    print(f"\nguest re-read of the tree: {reread_s:.1f} s, {hits} hits, {disk} disk reads "
          f"({hits / max(1, hits + disk):.0%} from tmem); stale-read guards "
          f"{f['stale_read_guards']}, errors {f['io_errors']}/{f['nbd_errors']}")
    assert hits > 4 * disk  # mostly from tmem
    assert f["io_errors"] == 0 and f["nbd_errors"] == 0 and final["tmem_connected"]
