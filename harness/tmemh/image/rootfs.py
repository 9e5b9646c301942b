"""The guest root file system: a cached debootstrap stage, the image's own files, the disk.

1. ``debootstrap_stage`` runs debootstrap (minbase plus the recipe's packages) and keeps the
   result as a tarball: the slow part, cached by release + mirror + packages.
2. ``populate_root`` unpacks that tarball and adds the kernel modules, the fast init, the guest
   agent, the SSH settings and key.
3. ``make_disk`` turns the tree into an ext4 file system (``mkfs.ext4 -d``, no mounting) and
   converts it to a qcow2 base image.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from tmemh.image.cleanup import remove_tree, unmount_below
from tmemh.image.commands import run_command
from tmemh.image.errors import ImageBuildError
from tmemh.image.inputs import DEBOOTSTRAP_VARIANT
from tmemh.image.kernel import modules_dir
from tmemh.image.options import ResolvedOptions, read_list_file

log = logging.getLogger(__name__)

INIT_PATH = "sbin/init-tmem"
AGENT_HOME = "opt/tmem-agent"
AGENT_LAUNCHER = "usr/local/bin/tmem-agent"
GUEST_NAMESERVER = "10.0.2.3"  # QEMU user-mode networking's DNS forwarder
_TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*"]


def debootstrap_stage(options: ResolvedOptions, work_dir: Path, tarball: Path) -> None:
    """debootstrap a minimal root into ``work_dir`` and pack it as ``tarball`` (atomically)."""
    root = work_dir / "debootstrap"
    step = "debootstrap"
    try:
        run_command(step, ["debootstrap", f"--variant={DEBOOTSTRAP_VARIANT}",
                           "--include=" + ",".join(options.packages),
                           options.release, str(root), options.mirror], timeout=3600)
    finally:
        unmount_below(root)
    for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
        leftover.unlink()
    for index in (root / "var/lib/apt/lists").glob("*_*"):
        index.unlink()
    partial = tarball.with_name(tarball.name + ".partial")
    run_command("pack debootstrap stage",
                ["tar", "-C", str(root), *_TAR_FLAGS, "-cf", str(partial), "."])
    os.replace(partial, tarball)
    remove_tree(root)


def _excluded_dirs(modules_root: Path, exclude_file: Path) -> set[Path]:
    if not exclude_file.is_file():
        return set()
    return {modules_root / "kernel" / rel for rel in read_list_file(exclude_file)}


def _copy_modules(kernel_tree: Path, root: Path, options: ResolvedOptions) -> None:
    source = modules_dir(kernel_tree, options.kernel_version)
    excluded = _excluded_dirs(source, options.recipe_dir / "modules-exclude.txt")

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(directory, n) in excluded]

    target = root / "usr/lib/modules" / options.kernel_version
    shutil.copytree(source, target, ignore=ignore, symlinks=True)
    # depmod again: the index must not name the modules left out.
    run_command("index guest modules", ["depmod", "-b", str(root), options.kernel_version])


def _install_file(source: Path, target: Path, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def _write_file(target: Path, text: str, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def populate_root(root: Path, options: ResolvedOptions, stage_tarball: Path, kernel_tree: Path,
                  public_key: Path) -> None:
    """Unpack the stage into ``root`` and add everything the image adds to it."""
    root.mkdir(parents=True)
    run_command("unpack debootstrap stage",
                ["tar", "-C", str(root), *_TAR_FLAGS, "-xpf", str(stage_tarball)])
    if not (root / "usr/sbin/sshd").is_file():
        raise ImageBuildError("unpack debootstrap stage", detail="stage has no /usr/sbin/sshd")
    _copy_modules(kernel_tree, root, options)

    recipe = options.recipe_dir
    _install_file(recipe / "init-tmem.sh", root / INIT_PATH, 0o755)
    _install_file(recipe / "tmem-agent.sh", root / AGENT_LAUNCHER, 0o755)
    _install_file(recipe / "sshd_config", root / "etc/ssh/sshd_config.d/tmem.conf", 0o644)
    shutil.copytree(options.agent_dir, root / AGENT_HOME / "tmem_agent",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    _install_file(public_key, ssh_dir / "authorized_keys", 0o600)

    _write_file(root / "etc/hostname", options.hostname + "\n")
    _write_file(root / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {options.hostname}\n")
    _write_file(root / "etc/resolv.conf", f"nameserver {GUEST_NAMESERVER}\n")
    _write_file(root / "etc/fstab", "/dev/vda / ext4 rw,relatime 0 1\n")


def make_disk(root: Path, size_mib: int, qcow2: Path) -> None:
    """Build an ext4 file system from ``root`` (no mounting) and store it as qcow2."""
    raw = qcow2.with_suffix(".raw")
    try:
        with raw.open("wb") as image:
            image.truncate(size_mib * 1024 * 1024)
        run_command("make ext4 file system",
                    ["mkfs.ext4", "-q", "-F", "-L", "tmem-root", "-m", "0",
                     "-d", str(root), str(raw), f"{size_mib}M"])
        run_command("convert to qcow2",
                    ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])
    finally:
        raw.unlink(missing_ok=True)
