"""Kernel module load order from a sample modules.dep."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemh.image.moddeps import ModuleIndex, ModuleNotFound, module_name

SAMPLE_DEP = """\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko \
kernel/drivers/virtio/virtio_pci_legacy_dev.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/block/virtio_blk.ko:
kernel/drivers/block/zram/zram.ko: kernel/mm/zsmalloc.ko
kernel/mm/zsmalloc.ko:
kernel/drivers/net/net-failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net-failover.ko kernel/net/core/failover.ko
"""
SAMPLE_BUILTIN = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n"


@pytest.fixture
def index() -> ModuleIndex:
    return ModuleIndex.parse(SAMPLE_DEP, SAMPLE_BUILTIN)


def position(order: list[str], name: str) -> int:
    return [module_name(p) for p in order].index(name)


def test_module_names() -> None:
    assert module_name("kernel/fs/ext4/ext4.ko") == "ext4"
    assert module_name("kernel/drivers/net/net-failover.ko.xz") == "net_failover"


def test_dependencies_come_first(index: ModuleIndex) -> None:
    order = index.load_order(["virtio_pci", "ext4"])
    for dep in ("crc16", "mbcache", "jbd2"):
        assert position(order, dep) < position(order, "ext4")
    assert position(order, "virtio_pci_modern_dev") < position(order, "virtio_pci")
    assert order[-1] == "kernel/fs/ext4/ext4.ko"


def test_each_module_once(index: ModuleIndex) -> None:
    order = index.load_order(["virtio_net", "ext4", "crc32c_generic", "jbd2"])
    assert len(order) == len(set(order))
    assert position(order, "failover") < position(order, "net_failover")
    assert position(order, "net_failover") < position(order, "virtio_net")


def test_dashes_and_underscores_are_the_same_name(index: ModuleIndex) -> None:
    assert index.load_order(["net-failover"]) == index.load_order(["net_failover"])


def test_builtin_modules_are_skipped(index: ModuleIndex) -> None:
    assert index.load_order(["virtio", "virtio_blk"]) == ["kernel/drivers/block/virtio_blk.ko"]


def test_unknown_module_is_a_clear_error(index: ModuleIndex) -> None:
    with pytest.raises(ModuleNotFound, match="no_such_module"):
        index.load_order(["ext4", "no_such_module"])


def test_missing_dependency_names_who_needs_it() -> None:
    broken = ModuleIndex.parse("kernel/a.ko: kernel/b.ko\n")
    with pytest.raises(ModuleNotFound, match="needed by a"):
        broken.load_order(["a"])


def test_cycles_are_reported() -> None:
    cyclic = ModuleIndex.parse("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n")
    with pytest.raises(ModuleNotFound, match="cycle"):
        cyclic.load_order(["a"])


def test_load_reads_a_modules_directory(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(SAMPLE_DEP)
    (tmp_path / "modules.builtin").write_text(SAMPLE_BUILTIN)
    index = ModuleIndex.load(tmp_path)
    assert "virtio" in index.builtin
    assert index.load_order(["zram"]) == ["kernel/mm/zsmalloc.ko",
                                          "kernel/drivers/block/zram/zram.ko"]
