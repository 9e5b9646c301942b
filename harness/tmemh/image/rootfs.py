"""The guest root file system: a cached debootstrap stage, the image's own files, the disk.

1. ``debootstrap_stage`` runs debootstrap (minbase plus the recipe's packages) and keeps the
   resulting tree: the slow part, cached by release + mirror + packages.
2. ``populate_root`` hard-links that tree (and the kernel modules) into a new root, which takes
   about a second, then adds the fast init, the guest agent, the SSH settings and key. Files are
   shared with the caches, so nothing here writes into an existing file: every file the image
   adds or changes is unlinked first and written anew.
3. ``make_disk`` turns the tree into an ext4 file system (``mkfs.ext4 -d``, no mounting) and
   converts it to a qcow2 base image.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tmemh.image.cleanup import mounts_below, unmount_below
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


def debootstrap_stage(options: ResolvedOptions, work_dir: Path, stage_dir: Path) -> None:
    """debootstrap a minimal root in ``work_dir``, then move it to ``stage_dir`` (atomically)."""
    root = work_dir / "debootstrap"
    try:
        run_command("debootstrap", ["debootstrap", f"--variant={DEBOOTSTRAP_VARIANT}",
                                    "--include=" + ",".join(options.packages),
                                    options.release, str(root), options.mirror], timeout=3600)
    finally:
        unmount_below(root)
    if mounts_below(root):
        raise ImageBuildError("debootstrap", detail=f"mounts left below {root}")
    for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
        leftover.unlink()
    for index in (root / "var/lib/apt/lists").glob("*_*"):
        index.unlink()
    if not (root / "usr/sbin/sshd").is_file():
        raise ImageBuildError("debootstrap", detail="the new root has no /usr/sbin/sshd")
    os.rename(root, stage_dir)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target)  # the cache spans file systems: copy instead


def _link_tree(source: Path, target: Path, ignore: Callable[[str, list[str]], list[str]] | None
               = None) -> None:
    """Copy the directories of ``source`` and hard-link its files (copy across file systems)."""
    shutil.copytree(source, target, symlinks=True, ignore=ignore, copy_function=_link_or_copy)


def _link_modules(kernel_tree: Path, root: Path, options: ResolvedOptions) -> None:
    source = modules_dir(kernel_tree, options.kernel_version)
    excluded = {source / "kernel" / rel
                for rel in read_list_file(options.recipe_dir / "modules-exclude.txt")}

    def ignore(directory: str, names: list[str]) -> list[str]:
        here = Path(directory)
        # the modules.* indexes are rewritten by depmod below: never link them
        return [n for n in names if here / n in excluded
                or (here == source and n.startswith("modules."))]

    _link_tree(source, root / "usr/lib/modules" / options.kernel_version, ignore)
    run_command("index guest modules", ["depmod", "-b", str(root), options.kernel_version])


def _replace_file(target: Path, data: bytes, mode: int) -> None:
    """Write ``target`` as a new file, never into the (maybe shared) existing one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    with target.open("xb") as new:
        new.write(data)
    target.chmod(mode)


def populate_root(root: Path, options: ResolvedOptions, stage_dir: Path, kernel_tree: Path,
                  public_key: Path) -> None:
    """Link the stage into ``root`` and add everything the image adds to it."""
    _link_tree(stage_dir, root)
    _link_modules(kernel_tree, root, options)

    recipe = options.recipe_dir
    _replace_file(root / INIT_PATH, (recipe / "init-tmem.sh").read_bytes(), 0o755)
    _replace_file(root / AGENT_LAUNCHER, (recipe / "tmem-agent.sh").read_bytes(), 0o755)
    _replace_file(root / "etc/ssh/sshd_config.d/tmem.conf",
                  (recipe / "sshd_config").read_bytes(), 0o644)
    agent_home = root / AGENT_HOME / "tmem_agent"
    for source in sorted(options.agent_dir.rglob("*.py")):
        if "__pycache__" not in source.parts:
            _replace_file(agent_home / source.relative_to(options.agent_dir),
                          source.read_bytes(), 0o644)

    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    _replace_file(ssh_dir / "authorized_keys", public_key.read_bytes(), 0o600)

    hostname = options.hostname
    for name, text in (("hostname", f"{hostname}\n"),
                       ("hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n"),
                       ("resolv.conf", f"nameserver {GUEST_NAMESERVER}\n"),
                       ("fstab", "/dev/vda / ext4 rw,relatime 0 1\n")):
        _replace_file(root / "etc" / name, text.encode(), 0o644)


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
