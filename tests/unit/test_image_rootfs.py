"""populate_root: the image's files land in the root, the shared caches stay untouched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tmemh.image.options import DEFAULT_AGENT_DIR, DEFAULT_RECIPE_DIR, ResolvedOptions
from tmemh.image.rootfs import AGENT_LAUNCHER, INIT_PATH, populate_root

VERSION = "6.1.0-41-amd64"
STAGE_FILES = {"etc/hostname": "debian\n", "etc/hosts": "127.0.0.1 localhost\n",
               "etc/fstab": "# empty\n", "usr/sbin/sshd": "binary\n",
               "etc/ssh/sshd_config": "Include /etc/ssh/sshd_config.d/*.conf\n"}


@pytest.fixture
def caches(tmp_path: Path) -> tuple[Path, Path]:
    stage = tmp_path / "stage"
    for rel, text in STAGE_FILES.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)
    (stage / "usr/lib").mkdir(parents=True, exist_ok=True)
    (stage / "lib").symlink_to("usr/lib")
    modules = tmp_path / "kernel/tree/lib/modules" / VERSION
    for rel in ("kernel/fs/ext4/ext4.ko", "kernel/sound/core/snd.ko", "modules.dep"):
        (modules / rel).parent.mkdir(parents=True, exist_ok=True)
        (modules / rel).write_bytes(b"cached " + rel.encode())
    return stage, tmp_path / "kernel/tree"


def snapshot(tree: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(tree)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.skipif(shutil.which("depmod") is None, reason="needs depmod (kmod)")
def test_populate_root_adds_files_and_leaves_caches_alone(tmp_path: Path,
                                                          caches: tuple[Path, Path]) -> None:
    stage, kernel_tree = caches
    before = snapshot(stage), snapshot(kernel_tree)
    key = tmp_path / "id_ed25519.pub"
    key.write_text("ssh-ed25519 AAAA test\n")
    options = ResolvedOptions(
        release="bookworm", mirror="http://deb.example.org/debian", packages=("python3",),
        kernel_version=VERSION, disk_size_mib=2048, hostname="tmem-guest",
        recipe_dir=DEFAULT_RECIPE_DIR, agent_dir=DEFAULT_AGENT_DIR)
    root = tmp_path / "root"
    populate_root(root, options, stage, kernel_tree, key)

    assert (snapshot(stage), snapshot(kernel_tree)) == before
    assert (root / "etc/hostname").read_text() == "tmem-guest\n"
    assert (root / "etc/ssh/sshd_config").samefile(stage / "etc/ssh/sshd_config")
    assert os.access(root / INIT_PATH, os.X_OK) and os.access(root / AGENT_LAUNCHER, os.X_OK)
    assert (root / "opt/tmem-agent/tmem_agent/__init__.py").is_file()
    assert (root / "root/.ssh/authorized_keys").read_text() == key.read_text()
    assert (root / "root/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
    guest_modules = root / "usr/lib/modules" / VERSION
    assert (guest_modules / "kernel/fs/ext4/ext4.ko").is_file()
    assert not (guest_modules / "kernel/sound").exists()  # images/modules-exclude.txt
    assert (guest_modules / "modules.dep").read_bytes() != b"cached modules.dep"
