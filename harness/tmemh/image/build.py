"""Building guest images into the cache, and finding them again.

Cache layout (under ``default_cache_dir()`` unless told otherwise)::

    build.lock                      one build at a time (fcntl.flock)
    kernel-version.json             the kernel version apt named, and for which package lists
    images/<key>/                   one finished image: manifest.json, vmlinux (booted),
                                    vmlinuz, initrd.gz, rootfs.qcow2, id_ed25519[.pub],
                                    inputs.json
    stages/debootstrap-<key>/       the slow debootstrap stage, reused (hard-linked) by images
    kernels/<version>/tree/         Debian's kernel package, unpacked and depmod'ed
    tmp/                            work trees of running builds; removed on success and failure

Every finished directory appears by a rename, so readers see a complete entry or none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from tmemh.files import flocked
from tmemh.image.cleanup import remove_tree
from tmemh.image.commands import ProgressCallback, StepReporter
from tmemh.image.errors import ImageBuildError, ImageNotFound
from tmemh.image.initramfs import build_initramfs
from tmemh.image.inputs import image_inputs, image_key, key_of_inputs, stage_key
from tmemh.image.kernel import (
    ensure_uncompressed_kernel,
    fetch_kernel,
    kernel_image,
    modules_dir,
)
from tmemh.image.manifest import MANIFEST_NAME, ImageManifest, ManifestError, default_cache_dir
from tmemh.image.options import ImageOptions, ResolvedOptions, resolve_options
from tmemh.image.rootfs import INIT_PATH, debootstrap_stage, make_disk, populate_root
from tmemh.image.sshkeys import generate_key_pair

log = logging.getLogger(__name__)

KERNEL_NAME = "vmlinux"  # uncompressed ELF, booted through PVH (see kernel.py)
COMPRESSED_KERNEL_NAME = "vmlinuz"  # the bzImage, kept as Debian ships it
INITRAMFS_NAME = "initrd.gz"
ROOTFS_NAME = "rootfs.qcow2"
INPUTS_NAME = "inputs.json"
SSH_USER = "root"
BASE_CMDLINE = f"console=ttyS0 root=/dev/vda rw init=/{INIT_PATH} quiet panic=-1"


def image_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / "images" / key


def _load_complete(directory: Path) -> ImageManifest | None:
    """The manifest of a finished entry, or None when absent or incomplete."""
    if not (directory / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = ImageManifest.load(directory)
    except ManifestError as exc:
        log.warning("ignoring broken image entry %s: %s", directory, exc)
        return None
    missing = manifest.missing_files()
    if missing:
        log.warning("ignoring incomplete image entry %s: missing %s", directory, missing)
        return None
    return manifest


def build_lock(cache_dir: Path, reporter: StepReporter) -> AbstractContextManager[None]:
    """Hold the cache's build lock (one builder or pruner at a time)."""
    return flocked(cache_dir / "build.lock",
                   on_wait=lambda: reporter.say("waiting for another image build to finish"))


def build_image(options: ImageOptions | None = None, *, cache_dir: Path | None = None,
                progress: ProgressCallback | None = None) -> ImageManifest:
    """Build the image for ``options`` unless the cache holds it already; return its manifest."""
    cache_dir = Path(cache_dir or default_cache_dir())
    resolved = resolve_options(options, cache_dir)
    inputs = image_inputs(resolved)
    key = key_of_inputs(inputs)
    entry = image_dir(cache_dir, key)
    manifest = _load_complete(entry)
    if manifest is not None:
        log.debug("image %s is cached", key)
        return manifest
    if os.geteuid() != 0:
        raise ImageBuildError("start", detail=f"building image {key} needs root (debootstrap, "
                              "mknod); run `tmemh image build` as root once")
    reporter = StepReporter(progress)
    for sub in ("images", "stages", "kernels", "tmp"):
        (cache_dir / sub).mkdir(parents=True, exist_ok=True)
    with build_lock(cache_dir, reporter):
        manifest = _load_complete(entry)  # another process may have built it meanwhile
        if manifest is not None:
            return manifest
        _remove_stale_work(cache_dir)
        remove_tree(entry)
        manifest = _build_locked(resolved, inputs, key, cache_dir, reporter)
    reporter.say(f"image {key} ready in {reporter.elapsed:.1f} s: {manifest.directory}")
    return manifest


def find_image(cache_dir: Path | None = None) -> ImageManifest:
    """The built image for the current default inputs; ImageNotFound when there is none."""
    cache_dir = Path(cache_dir or default_cache_dir())
    key = image_key(resolve_options(None, cache_dir))
    manifest = _load_complete(image_dir(cache_dir, key))
    if manifest is None:
        raise ImageNotFound(f"no guest image for the current inputs (key {key}) in "
                            f"{cache_dir}; run `tmemh image build` first")
    return manifest


def _remove_stale_work(cache_dir: Path) -> None:
    """Work trees left by builds that died (we hold the lock, so none is running)."""
    for stale in (cache_dir / "tmp").iterdir():
        log.warning("removing stale build tree %s", stale)
        remove_tree(stale)


def _ensure_stage(resolved: ResolvedOptions, cache_dir: Path, work: Path,
                  reporter: StepReporter) -> Path:
    stage = cache_dir / "stages" / f"debootstrap-{stage_key(resolved)}"
    if (stage / "usr/sbin/sshd").is_file():
        reporter.say(f"debootstrap stage cached: {stage.name}")
        return stage
    with reporter.step(f"debootstrap {resolved.release} ({len(resolved.packages)} packages)"):
        remove_tree(stage)
        debootstrap_stage(resolved, work, stage)
    return stage


def _ensure_kernel(resolved: ResolvedOptions, cache_dir: Path, work: Path,
                   reporter: StepReporter) -> Path:
    version = resolved.kernel_version
    cached = cache_dir / "kernels" / version
    if kernel_image(cached / "tree", version).is_file():
        reporter.say(f"kernel {version} cached")
        return cached / "tree"
    with reporter.step(f"fetch kernel {version}"):
        fetched = work / "kernel"
        fetch_kernel(version, fetched)
        remove_tree(cached)
        os.rename(fetched, cached)
    return cached / "tree"


def _install_kernel(kernel_tree: Path, version: str, staged: Path) -> Path:
    """Copy both kernel forms into the entry; return the one to boot."""
    shutil.copyfile(kernel_image(kernel_tree, version), staged / COMPRESSED_KERNEL_NAME)
    vmlinux = ensure_uncompressed_kernel(kernel_tree, version)
    if vmlinux is None:
        return staged / COMPRESSED_KERNEL_NAME
    shutil.copyfile(vmlinux, staged / KERNEL_NAME)
    return staged / KERNEL_NAME


def _build_locked(resolved: ResolvedOptions, inputs: dict[str, Any], key: str, cache_dir: Path,
                  reporter: StepReporter) -> ImageManifest:
    work = cache_dir / "tmp" / f"build-{key}-{os.getpid()}"
    try:
        work.mkdir()
        stage = _ensure_stage(resolved, cache_dir, work, reporter)
        kernel_tree = _ensure_kernel(resolved, cache_dir, work, reporter)
        staged = work / "entry"
        staged.mkdir()
        version = resolved.kernel_version
        with reporter.step("ssh key and kernel"):
            private_key, public_key = generate_key_pair(staged)
            kernel = _install_kernel(kernel_tree, version, staged)
        with reporter.step("initramfs"):
            build_initramfs(work, resolved.recipe_dir, modules_dir(kernel_tree, version),
                            staged / INITRAMFS_NAME)
        with reporter.step("root tree"):
            populate_root(work / "root", resolved, stage, kernel_tree, public_key)
        with reporter.step(f"root disk ({resolved.disk_size_mib} MiB, qcow2)"):
            make_disk(work / "root", resolved.disk_size_mib, staged / ROOTFS_NAME)
            remove_tree(work / "root")
            (staged / ROOTFS_NAME).chmod(0o444)  # a base image: VMs use overlays
        manifest = ImageManifest(
            directory=staged, key=key, kernel=kernel,
            initramfs=staged / INITRAMFS_NAME, rootfs=staged / ROOTFS_NAME,
            kernel_version=version, cmdline=BASE_CMDLINE, ssh_user=SSH_USER,
            ssh_private_key=private_key, ssh_public_key=public_key)
        (staged / INPUTS_NAME).write_text(
            json.dumps(inputs, indent=2, sort_keys=True, default=str) + "\n")
        manifest.save()
        final = image_dir(cache_dir, key)
        os.rename(staged, final)
        return ImageManifest.load(final)
    finally:
        remove_tree(work)
