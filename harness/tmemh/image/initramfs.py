"""The guest initramfs: busybox-static, the boot modules and the recipe's init script.

The modules named in ``initramfs-modules.txt`` and their dependencies (from ``modules.dep``) are
copied to ``/modules/NN-name.ko`` so that the init script loads them in order with a plain glob.
The tree is packed as a gzip'd newc cpio archive.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import stat
from pathlib import Path

from tmemh.image.commands import run_command
from tmemh.image.errors import ImageBuildError
from tmemh.image.moddeps import ModuleIndex, ModuleNotFound, module_name
from tmemh.image.options import read_list_file

log = logging.getLogger(__name__)

BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = "initramfs-init.sh"
MODULE_LIST = "initramfs-modules.txt"
STEP = "build initramfs"


def stage_initramfs(tree: Path, recipe_dir: Path, modules_dir: Path) -> list[str]:
    """Fill ``tree`` with the initramfs contents; returns the module names in load order."""
    for sub in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    if not BUSYBOX.is_file():
        raise ImageBuildError(STEP, detail=f"{BUSYBOX} missing (apt package busybox-static)")
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    # The kernel opens /dev/console before it runs /init: without it there is no output.
    os.mknod(tree / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    init = tree / "init"
    shutil.copyfile(recipe_dir / INIT_SCRIPT, init)
    init.chmod(0o755)

    index = ModuleIndex.load(modules_dir)
    try:
        order = index.load_order(read_list_file(recipe_dir / MODULE_LIST))
    except ModuleNotFound as exc:
        raise ImageBuildError(STEP, detail=str(exc)) from exc
    if any(not rel.endswith(".ko") for rel in order):
        raise ImageBuildError(STEP, detail=f"compressed modules are not supported: {order}")
    names = []
    for number, rel in enumerate(order):
        name = module_name(rel)
        shutil.copyfile(modules_dir / rel, tree / "modules" / f"{number:02d}-{name}.ko")
        names.append(name)
    log.debug("initramfs modules: %s", names)
    return names


def pack_cpio(tree: Path, output: Path) -> None:
    """Pack ``tree`` as a gzip'd newc cpio archive owned by root."""
    entries = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    listing = tree.parent / (tree.name + ".list")
    listing.write_text("\0".join(entries) + "\0")
    raw = output.with_suffix(".raw")
    try:
        run_command(STEP, ["sh", "-c", 'cpio --quiet --null -o -H newc -R 0:0 < "$0" > "$1"',
                           str(listing), str(raw)], cwd=tree)
        with raw.open("rb") as source, gzip.open(output, "wb", compresslevel=6) as target:
            shutil.copyfileobj(source, target)
    finally:
        listing.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)


def build_initramfs(work_dir: Path, recipe_dir: Path, modules_dir: Path, output: Path) -> None:
    tree = work_dir / "initramfs"
    stage_initramfs(tree, recipe_dir, modules_dir)
    pack_cpio(tree, output)
    shutil.rmtree(tree)
