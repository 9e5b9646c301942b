"""ImageManifest: save/load round trip, relative paths, clear errors; default_cache_dir."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tmemh.image.manifest import ImageManifest, ManifestError, default_cache_dir


def make_manifest(directory: Path) -> ImageManifest:
    return ImageManifest(
        directory=directory, key="0123456789abcdef", kernel=directory / "vmlinuz",
        initramfs=directory / "initrd.gz", rootfs=directory / "rootfs.qcow2",
        kernel_version="6.1.0-41-amd64", cmdline="console=ttyS0 root=/dev/vda rw",
        ssh_user="root", ssh_private_key=directory / "id_ed25519",
        ssh_public_key=directory / "id_ed25519.pub")


def test_round_trip(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path.resolve())
    manifest.save()
    assert ImageManifest.load(tmp_path) == manifest


def test_paths_are_stored_relative_so_entries_can_move(tmp_path: Path) -> None:
    first = tmp_path / "building"
    first.mkdir()
    make_manifest(first.resolve()).save()
    stored = json.loads((first / "manifest.json").read_text())
    assert stored["rootfs"] == "rootfs.qcow2"
    moved = tmp_path / "final"
    shutil.move(first, moved)
    loaded = ImageManifest.load(moved)
    assert loaded.rootfs == moved.resolve() / "rootfs.qcow2"
    assert loaded.directory == moved.resolve()


def test_missing_files_lists_what_is_absent(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path)
    assert len(manifest.missing_files()) == 5
    for path in (manifest.kernel, manifest.initramfs, manifest.rootfs,
                 manifest.ssh_private_key, manifest.ssh_public_key):
        path.write_text("x")
    assert manifest.missing_files() == []


def test_load_without_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no image manifest"):
        ImageManifest.load(tmp_path)


def test_load_of_incomplete_manifest_names_the_field(tmp_path: Path) -> None:
    make_manifest(tmp_path.resolve()).save()
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["kernel_version"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="kernel_version"):
        ImageManifest.load(tmp_path)


def test_load_of_garbage_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        ImageManifest.load(tmp_path)


def test_default_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("TMEMH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("TMEMH_CACHE")
    expected = Path("/var/cache/tmemh") if os.geteuid() == 0 else Path.home() / ".cache/tmemh"
    assert default_cache_dir() == expected
