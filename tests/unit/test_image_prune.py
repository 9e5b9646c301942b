"""prune_cache keeps what the current inputs use and what a process has open."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemh.image import prune
from tmemh.image.build import image_dir
from tmemh.image.inputs import image_key, stage_key
from tmemh.image.options import ImageOptions, resolve_options
from tmemh.image.prune import open_files_below, prune_cache

OPTIONS = ImageOptions(mirror="http://deb.example.org/debian", kernel_version="6.1.0-41-amd64")


def make_entry(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "rootfs.qcow2").write_bytes(b"disk")
    return path


def test_prune_removes_only_unused_entries(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    resolved = resolve_options(OPTIONS)
    current = make_entry(image_dir(cache, image_key(resolved)))
    stage = make_entry(cache / "stages" / f"debootstrap-{stage_key(resolved)}")
    kernel = make_entry(cache / "kernels" / "6.1.0-41-amd64")
    old_image = make_entry(image_dir(cache, "0000000000000000"))
    busy_image = make_entry(image_dir(cache, "1111111111111111"))
    old_stage = make_entry(cache / "stages" / "debootstrap-2222222222222222")
    old_kernel = make_entry(cache / "kernels" / "6.1.0-40-amd64")

    with (busy_image / "rootfs.qcow2").open("rb"):  # as a running VM would
        assert busy_image / "rootfs.qcow2" in open_files_below(cache)
        removed = prune_cache(cache, OPTIONS)

    assert sorted(removed) == sorted([old_image, old_stage, old_kernel])
    for kept in (current, stage, kernel, busy_image):
        assert (kept / "rootfs.qcow2").is_file()
    for gone in removed:
        assert not gone.exists()


def test_prune_of_a_missing_cache_does_nothing(tmp_path: Path) -> None:
    assert prune_cache(tmp_path / "absent", OPTIONS) == []
    assert not (tmp_path / "absent").exists()


def test_prune_of_a_missing_cache_resolves_no_options(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("resolve_options (apt, file hashing) is not needed here")

    monkeypatch.setattr(prune, "resolve_options", refuse)
    assert prune_cache(tmp_path / "absent", None) == []
