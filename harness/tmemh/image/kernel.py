"""Debian's kernel for the guest: find the current version, download and unpack it.

The host runs Debian 12, so its apt knows the bookworm kernel: ``linux-image-amd64`` depends on
``linux-image-<version>-amd64``. The package is fetched with ``apt-get download``, unpacked with
``dpkg-deb -x`` and its module index rebuilt with ``depmod -b``.

Besides the compressed ``vmlinuz`` (a bzImage), the image ships the kernel uncompressed as an
ELF ``vmlinux``: Debian builds with CONFIG_PVH, so QEMU boots it directly through the PVH entry
point, skipping the firmware and the in-guest decompression (about 2.5 s of a 7 s boot under TCG).
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import re
import shutil
from pathlib import Path

from tmemh.files import write_atomic
from tmemh.image.commands import run_command
from tmemh.image.errors import ImageBuildError

log = logging.getLogger(__name__)

META_PACKAGE = "linux-image-amd64"
APT_STATE_DIRS = (Path("/var/lib/apt/lists"), Path("/etc/apt"), Path("/etc/apt/sources.list.d"))
_DEPENDS = re.compile(r"^\s*Depends:\s*linux-image-(\d+\.\d+\.\d+-\d+-amd64)\s*$", re.MULTILINE)


def kernel_package(version: str) -> str:
    return f"linux-image-{version}"


def parse_kernel_depends(apt_cache_output: str) -> str:
    """The kernel version from ``apt-cache depends linux-image-amd64`` output."""
    match = _DEPENDS.search(apt_cache_output)
    if match is None:
        raise ValueError("no linux-image-<version>-amd64 dependency (does the host need"
                         f" `apt-get update`?) in:\n{apt_cache_output}")
    return match.group(1)


def apt_lists_stamp() -> str:
    """A fingerprint of the host's apt package lists and sources: changes when they change."""
    digest = hashlib.sha256()
    for directory in APT_STATE_DIRS:
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.is_file():
                    info = path.stat()
                    digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def current_kernel_version(memo: Path | None = None) -> str:
    """The kernel version Debian's ``linux-image-amd64`` currently points at (host apt).

    ``apt-cache`` takes a second or more when apt keeps no binary cache, so the answer is
    remembered in ``memo`` (if given) together with a fingerprint of the package lists.
    """
    stamp = apt_lists_stamp()
    if memo is not None:
        try:
            remembered = json.loads(memo.read_text())
            if remembered.get("apt_lists") == stamp:
                return str(remembered["kernel_version"])
        except (OSError, ValueError, KeyError):
            pass
    output = run_command("find kernel version", ["apt-cache", "depends", META_PACKAGE])
    try:
        version = parse_kernel_depends(output)
    except ValueError as exc:
        raise ImageBuildError("find kernel version", detail=str(exc)) from exc
    if memo is not None and memo.parent.is_dir():
        try:
            write_atomic(memo, json.dumps({"apt_lists": stamp,
                                           "kernel_version": version}).encode())
        except OSError as exc:
            log.debug("cannot remember the kernel version in %s: %s", memo, exc)
    return version


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


def uncompressed_kernel(tree: Path, version: str) -> Path:
    return tree / "boot" / f"vmlinux-{version}"


XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside an xz-compressed bzImage; ValueError if there is none."""
    start = bzimage.find(XZ_MAGIC)
    if start < 0:
        raise ValueError("no xz-compressed payload in the bzImage")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        elf = decompressor.decompress(bzimage[start:])
    except lzma.LZMAError as exc:
        raise ValueError(f"bad xz payload in the bzImage: {exc}") from exc
    if not decompressor.eof or not elf.startswith(ELF_MAGIC):
        raise ValueError("the bzImage payload is not a complete ELF kernel")
    return elf


def ensure_uncompressed_kernel(tree: Path, version: str) -> Path | None:
    """``boot/vmlinux-<version>`` (made once from the bzImage), or None if it cannot be made."""
    target = uncompressed_kernel(tree, version)
    if target.is_file():
        return target
    try:
        elf = extract_vmlinux(kernel_image(tree, version).read_bytes())
    except ValueError as exc:
        log.warning("booting the compressed kernel (slower): %s", exc)
        return None
    write_atomic(target, elf)
    return target


def modules_dir(tree: Path, version: str) -> Path:
    return tree / "lib" / "modules" / version
