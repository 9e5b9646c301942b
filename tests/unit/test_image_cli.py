"""``tmemh image``: bad input gives a clear message and exit code 1, and builds nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tmemh.cli import main

FIXED = ["--mirror", "http://deb.example.org/debian", "--kernel-version", "6.1.0-41-amd64"]


def test_build_with_a_bad_disk_size_fails_clearly(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    code = main(["image", "--cache-dir", str(cache), "build", *FIXED, "--disk-size-mib", "10"])
    assert code == 1
    assert "disk size 10 MiB" in capsys.readouterr().err
    assert not cache.exists()


def test_build_with_a_bad_kernel_version_fails_clearly(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    code = main(["image", "--cache-dir", str(cache), "build", "--kernel-version", "newest"])
    assert code == 1
    assert "invalid kernel version 'newest'" in capsys.readouterr().err
    assert not cache.exists()


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs the host's apt")
@pytest.mark.parametrize("command", [["show"], ["path", "rootfs"]])
def test_show_and_path_without_an_image_advise_building(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code = main(["image", "--cache-dir", str(tmp_path), *command])
    assert code == 1
    assert "run `tmemh image build`" in capsys.readouterr().err
