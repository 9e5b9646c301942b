"""Image builder parts that run without building an image: options, commands, initramfs."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tmemh.image.build import build_image
from tmemh.image.cleanup import mounts_below, remove_tree
from tmemh.image.commands import StepReporter, run_command
from tmemh.image.errors import ImageBuildError, InvalidImageOptions
from tmemh.image.initramfs import BUSYBOX, build_initramfs
from tmemh.image.kernel import (
    apt_lists_stamp,
    current_kernel_version,
    extract_vmlinux,
    parse_kernel_depends,
)
from tmemh.image.options import DEFAULT_RECIPE_DIR, ImageOptions, host_mirror, resolve_options

FIXED = {"mirror": "http://deb.example.org/debian", "kernel_version": "6.1.0-41-amd64"}


def test_resolve_options_fills_in_the_recipe() -> None:
    resolved = resolve_options(ImageOptions(**FIXED))
    assert "openssh-server" in resolved.packages
    assert "libpython3.11-stdlib" in resolved.packages
    assert resolved.kernel_version == "6.1.0-41-amd64"


@pytest.mark.parametrize("bad, message", [
    ({"release": "Bookworm 12"}, "release"),
    ({"packages": ("python3", "rm -rf /")}, "package"),
    ({"packages": ()}, "package"),
    ({"disk_size_mib": 64}, "disk size"),
    ({"hostname": "-bad-"}, "host name"),
    ({"mirror": "ftp:/nowhere"}, "mirror"),
    ({"kernel_version": "latest"}, "kernel version"),
    ({"recipe_dir": Path("/nonexistent")}, "recipe"),
    ({"agent_dir": Path("/nonexistent")}, "tmem_agent"),
])
def test_bad_options_are_refused_before_building(tmp_path: Path, bad: dict, message: str) -> None:
    options = ImageOptions(**{**FIXED, **bad})
    cache = tmp_path / "cache"
    with pytest.raises(InvalidImageOptions, match=message):
        build_image(options, cache_dir=cache)
    assert not cache.exists()


def test_host_mirror_reads_deb822_sources(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.example.org/debian/\n"
                       "Suites: bookworm\n\nTypes: deb\n"
                       "URIs: http://mirror.example.org/debian-security\n")
    assert host_mirror((tmp_path / "missing", sources)) == "http://mirror.example.org/debian"
    assert host_mirror((tmp_path / "missing",)) == "http://deb.debian.org/debian"


def test_host_mirror_reads_one_line_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list"
    sources.write_text("# comment\ndeb http://security.debian.org/debian-security bookworm main\n"
                       "deb [arch=amd64] http://ftp.example.org/debian/ bookworm main\n")
    assert host_mirror((sources,)) == "http://ftp.example.org/debian"


def test_parse_kernel_depends() -> None:
    output = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
    assert parse_kernel_depends(output) == "6.1.0-56-amd64"
    with pytest.raises(ValueError):
        parse_kernel_depends("linux-image-amd64\n")


def test_failed_command_names_command_exit_code_and_output_tail() -> None:
    script = "for i in $(seq 1 100); do echo line$i; done; echo oops >&2; exit 7"
    with pytest.raises(ImageBuildError) as caught:
        run_command("demo step", ["sh", "-c", script])
    error = caught.value
    assert error.exit_code == 7
    assert error.command is not None and error.command[0] == "sh"
    assert "oops" in error.output_tail and "line100" in error.output_tail
    assert "line1\n" not in error.output_tail
    assert "demo step" in str(error) and "exited with 7" in str(error)
    assert isinstance(error.__cause__, subprocess.CalledProcessError)


def test_missing_program_is_a_build_error() -> None:
    with pytest.raises(ImageBuildError, match="not found") as caught:
        run_command("demo step", ["/nonexistent/program"])
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_step_reporter_reports_names_and_times() -> None:
    seen: list[str] = []
    reporter = StepReporter(seen.append)
    with reporter.step("first"):
        pass
    with pytest.raises(RuntimeError), reporter.step("second"):
        raise RuntimeError("boom")
    assert seen[0] == "first ..."
    assert seen[1].startswith("first done in ") and seen[1].endswith(" s")
    assert seen[3].startswith("second FAILED after ")


def test_remove_tree_deletes_unmounted_trees(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "file").write_text("x")
    assert mounts_below(tree) == []
    remove_tree(tree)
    assert not tree.exists()
    remove_tree(tree)  # absent: nothing to do


@pytest.mark.skipif(os.geteuid() != 0 or not BUSYBOX.is_file(), reason="needs root, busybox")
def test_initramfs_holds_init_busybox_and_ordered_modules(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    for rel in ("kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/ext4/ext4.ko", "kernel/crypto/crc32c_generic.ko",
                "kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/net/virtio_net.ko", "kernel/drivers/char/virtio_console.ko"):
        (modules / rel).parent.mkdir(parents=True, exist_ok=True)
        (modules / rel).write_bytes(rel.encode())
    (modules / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
        + "".join(f"{r}:\n" for r in ("kernel/lib/crc16.ko", "kernel/fs/mbcache.ko",
                                      "kernel/fs/jbd2/jbd2.ko", "kernel/crypto/crc32c_generic.ko",
                                      "kernel/drivers/virtio/virtio_pci.ko",
                                      "kernel/drivers/block/virtio_blk.ko",
                                      "kernel/drivers/net/virtio_net.ko",
                                      "kernel/drivers/char/virtio_console.ko")))
    output = tmp_path / "initrd.gz"
    build_initramfs(tmp_path / "work", DEFAULT_RECIPE_DIR, modules, output)
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=gzip.decompress(output.read_bytes()),
                             stdout=subprocess.PIPE, check=True).stdout.decode().split()
    assert {"init", "bin/busybox", "dev/console"} <= set(listing)
    loaded = sorted(name for name in listing if name.startswith("modules/"))
    names = [name.split("-", 1)[1].removesuffix(".ko") for name in loaded]
    assert names.index("jbd2") < names.index("ext4")
    assert names[-1] == "ext4" and len(names) == 9
    assert not (tmp_path / "work" / "initramfs").exists()


def test_kernel_version_is_remembered_per_apt_lists(tmp_path: Path) -> None:
    memo = tmp_path / "kernel-version.json"
    memo.write_text(json.dumps({"apt_lists": apt_lists_stamp(),
                                "kernel_version": "6.1.0-99-amd64"}))
    assert current_kernel_version(memo) == "6.1.0-99-amd64"
    if shutil.which("apt-cache") is None:
        return
    memo.write_text(json.dumps({"apt_lists": "stale", "kernel_version": "6.1.0-99-amd64"}))
    fresh = current_kernel_version(memo)
    assert fresh != "6.1.0-99-amd64" and fresh.endswith("-amd64")
    assert json.loads(memo.read_text()) == {"apt_lists": apt_lists_stamp(),
                                            "kernel_version": fresh}


def test_extract_vmlinux_finds_the_xz_payload() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    bzimage = b"MZ setup code" + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0trailer"
    assert extract_vmlinux(bzimage) == elf


@pytest.mark.parametrize("bzimage, message", [
    (b"MZ no payload at all", "no xz"),
    (b"MZ" + lzma.compress(b"not an elf", format=lzma.FORMAT_XZ), "not a complete ELF"),
    (b"MZ" + lzma.compress(b"\x7fELF" + b"x" * 5000, format=lzma.FORMAT_XZ)[:60], "ELF"),
])
def test_extract_vmlinux_refuses_what_is_not_a_kernel(bzimage: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        extract_vmlinux(bzimage)


def test_building_without_root_is_refused_before_anything_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    cache = tmp_path / "cache"
    with pytest.raises(ImageBuildError, match="needs root"):
        build_image(ImageOptions(**FIXED), cache_dir=cache)
    assert not cache.exists()
