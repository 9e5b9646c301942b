"""The cells' data disk: its size, the file system on the configuration's data device (the
disk, or the tmem agent's block cache over it), and disk figures over both disks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_suite_configs import FakeDaemon, shell

from tmemh.suite import datadisk
from tmemh.suite.configkinds import make_configuration
from tmemh.suite.configs import CellHost
from tmemh.suite.suitefile import parse_suite
from tmemh.vm import DATA_DISK, ROOT_DISK, BlockStats, VMSpec

READY = {"device": "/dev/nbd0", "cache": "ready", "cache_device": "/dev/nbd1",
         "cache_disk": "/dev/vdb"}


def suite(vm: dict[str, object]) -> dict[str, object]:
    return {"suite": {"workloads": ["pagecache"], "configurations": ["disk-swap", "tmem"]},
            "vm": vm}


def test_every_shape_has_a_data_disk_of_its_own_size_or_the_default() -> None:
    default = parse_suite(suite({"memory": "256M"})).shapes[0]
    assert default.data_disk_size_mib == 1024 == datadisk.default_size_mib(256)
    assert datadisk.default_size_mib(512) == 2048
    sized = parse_suite(suite({"memory": "256M", "data_disk": "3G"})).shapes[0]
    assert sized.data_disk_size_mib == 3072 and sized.describe()["data_disk_mib"] == 3072
    assert datadisk.data_disk(3072).size_mib == 3072
    assert datadisk.data_disk(3072).throttle.unlimited  # throttled with the root disk later


def test_ext4_on_the_data_device_at_the_work_directory(tmp_path: Path) -> None:
    guest, fake = shell(tmp_path, [("serial", 0, "tmemh-data\n"),
                                   ("blockdev", 0, str(1 << 30))])
    made = datadisk.make_filesystem(guest, "/dev/nbd1")
    assert made == {"device": "/dev/nbd1", "disk": "/dev/vdb", "size": 1 << 30,
                    "mount": datadisk.MOUNT_POINT, "fs": "ext4"}
    mkfs = next(c for c in fake.commands if "mkfs.ext4" in c)
    assert "lazy_itable_init=0" in mkfs and "/dev/nbd1" in mkfs
    assert f"mount -t ext4 /dev/nbd1 {datadisk.MOUNT_POINT}" in mkfs
    wrong, _ = shell(tmp_path, [("serial", 0, "other\n")])
    with pytest.raises(RuntimeError, match="not the data disk"):
        datadisk.make_filesystem(wrong, "/dev/vdb")


def test_plain_configurations_use_the_disk_and_tmem_its_cache(tmp_path: Path) -> None:
    assert make_configuration("disk-swap").data_device({}) == "/dev/vdb"
    tmem = make_configuration("tmem")
    host = CellHost("c1", FakeDaemon())  # type: ignore[arg-type]
    spec = tmem.vm_spec(VMSpec(name="c1", memory_mib=256, kernel_args=("quiet",)), host)
    assert spec.kernel_args == ("quiet", "tmem.cache_disk=/dev/vdb") and spec.name == "c1"
    guest, _ = shell(tmp_path, [("cat /run/tmem-agent/ready", 0, json.dumps(READY))])
    prepared = tmem.prepare(guest)
    assert prepared["cache_device"] == "/dev/nbd1"
    assert tmem.data_device(prepared) == "/dev/nbd1"


def test_tmem_stops_when_the_cache_did_not_attach(tmp_path: Path) -> None:
    failed = READY | {"cache": "failed: nbd-client failed (1)"}
    guest, _ = shell(tmp_path, [("cat /run/tmem-agent/ready", 0, json.dumps(failed)),
                                ("tail", 0, "TMEM-CACHE-FAILED nbd-client failed (1)")])
    with pytest.raises(RuntimeError, match="block cache is not ready"):
        make_configuration("tmem").prepare(guest)


class Counters:
    def __init__(self, root: BlockStats, data: BlockStats) -> None:
        self.stats = {ROOT_DISK: root, DATA_DISK: data}

    def block_stats(self, disk: str = ROOT_DISK) -> BlockStats:
        return self.stats[disk]


def test_disk_figures_count_both_disks_and_the_data_disk_alone() -> None:
    before = datadisk.block_stats(Counters(BlockStats(100, 200, 1, 2), BlockStats(0, 0, 0, 0)))
    after = datadisk.block_stats(Counters(BlockStats(150, 300, 2, 4),
                                          BlockStats(4096, 8192, 1, 2)))
    assert datadisk.total(after) == BlockStats(4246, 8492, 3, 6)
    assert datadisk.disk_metrics(before, after) == {
        "disk_read_bytes": 4146, "disk_write_bytes": 8292, "disk_bytes": 12438, "disk_ops": 6,
        "data_disk_read_bytes": 4096, "data_disk_write_bytes": 8192,
        # reads of both disks (4146) and the root disk's writes (100), not the data disk's
        "swap_and_read_bytes": 4246}
