"""``tmemh image``: bad input gives a clear message and exit code 2, and builds nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tmemh.cli import main

FIXED = ["--mirror", "http://deb.example.org/debian", "--kernel-version", "6.1.0-41-amd64"]


@pytest.mark.parametrize("size", [["--disk-size", "10M"], ["--disk-size", "10"],
                                  ["--disk-size-mib", "10"]])
def test_build_with_a_bad_disk_size_fails_clearly(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  size: list[str]) -> None:
    cache = tmp_path / "cache"
    code = main(["image", "--cache-dir", str(cache), "build", *FIXED, *size])
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "tmemh: error: disk size 10 MiB < 512 MiB"
    assert ("deprecated" in err) == (size[0] == "--disk-size-mib")
    assert not cache.exists()


def test_build_with_a_disk_size_that_is_not_a_size_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    assert main(["image", "--cache-dir", str(cache), "build", "--disk-size", "big"]) == 2
    assert "argument --disk-size: bad size 'big'" in capsys.readouterr().err
    assert not cache.exists()


def test_build_with_a_bad_kernel_version_fails_clearly(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    code = main(["image", "--cache-dir", str(cache), "build", "--kernel-version", "newest"])
    assert code == 2
    assert "invalid kernel version 'newest'" in capsys.readouterr().err
    assert not cache.exists()


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs the host's apt")
@pytest.mark.parametrize("command", [["show"], ["path", "rootfs"]])
def test_show_and_path_without_an_image_advise_building(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code = main(["image", "--cache-dir", str(tmp_path), *command])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("tmemh: error: ") and err.count("\n") == 1
    assert "run `tmemh image build`" in err
