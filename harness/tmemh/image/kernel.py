"""Debian's kernel for the guest: find the current version, download and unpack it.

The host runs Debian 12, so its apt knows the bookworm kernel: ``linux-image-amd64`` depends on
``linux-image-<version>-amd64``. The package is fetched with ``apt-get download``, unpacked with
``dpkg-deb -x`` and its module index rebuilt with ``depmod -b``.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from tmemh.image.commands import run_command
from tmemh.image.errors import ImageBuildError

log = logging.getLogger(__name__)

META_PACKAGE = "linux-image-amd64"
_DEPENDS = re.compile(r"^\s*Depends:\s*linux-image-(\d+\.\d+\.\d+-\d+-amd64)\s*$", re.MULTILINE)


def kernel_package(version: str) -> str:
    return f"linux-image-{version}"


def parse_kernel_depends(apt_cache_output: str) -> str:
    """The kernel version from ``apt-cache depends linux-image-amd64`` output."""
    match = _DEPENDS.search(apt_cache_output)
    if match is None:
        raise ValueError(f"no linux-image-<version>-amd64 dependency in:\n{apt_cache_output}")
    return match.group(1)


def current_kernel_version() -> str:
    """The kernel version Debian's ``linux-image-amd64`` currently points at (host apt)."""
    output = run_command("find kernel version", ["apt-cache", "depends", META_PACKAGE])
    try:
        return parse_kernel_depends(output)
    except ValueError as exc:
        raise ImageBuildError("find kernel version", detail=str(exc)) from exc


def fetch_kernel(version: str, dest: Path) -> None:
    """Download and unpack the kernel package into ``dest`` (boot/vmlinuz-*, lib/modules/*)."""
    download_dir = dest / "download"
    tree = dest / "tree"
    download_dir.mkdir(parents=True)
    run_command("download kernel", ["apt-get", "download", kernel_package(version)],
                cwd=download_dir)
    debs = sorted(download_dir.glob("*.deb"))
    if len(debs) != 1:
        raise ImageBuildError("download kernel", detail=f"expected one .deb, found {debs}")
    run_command("unpack kernel", ["dpkg-deb", "-x", str(debs[0]), str(tree)])
    shutil.rmtree(download_dir)
    run_command("index kernel modules", ["depmod", "-b", str(tree), version])
    if not kernel_image(tree, version).is_file():
        raise ImageBuildError("unpack kernel", detail=f"no boot/vmlinuz-{version} in package")


def kernel_image(tree: Path, version: str) -> Path:
    return tree / "boot" / f"vmlinuz-{version}"


def modules_dir(tree: Path, version: str) -> Path:
    return tree / "lib" / "modules" / version
