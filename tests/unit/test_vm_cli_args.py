"""`tmemh vm` argument handling that needs no VM: channels, sizes, missing VMs, empty state."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tmemd.clikit import build_parser
from tmemh.cli import DESCRIPTION, SUBCOMMAND_MODULES, main
from tmemh.vm import DataDisk, DiskThrottle
from tmemh.vm_cli import _data_disk, _parse_channel


def test_channel_options_parse() -> None:
    server = _parse_channel("org.tmem.0=/run/a.sock")
    assert (server.name, server.socket_path, server.mode) == ("org.tmem.0", Path("/run/a.sock"),
                                                              "server")
    assert _parse_channel("org.tmem.1=/run/b.sock,connect").mode == "connect"
    for bad in ("nopath", "name=", "n=/x.sock,listen", "n=relative.sock"):
        with pytest.raises(argparse.ArgumentTypeError):
            _parse_channel(bad)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("tmemh", DESCRIPTION, SUBCOMMAND_MODULES).parse_args(list(argv))


def test_sizes_take_units_and_plain_numbers_keep_their_unit() -> None:
    args = parse("vm", "up", "x", "--memory", "1G", "--disk-size", "4G", "--throttle-bps", "20M")
    assert (args.memory, args.disk_size, args.throttle_bps) == (1024, 4096, 20 << 20)
    plain = parse("vm", "up", "x", "--memory", "768", "--disk-size", "3000",
                  "--throttle-bps", "1000000")
    assert (plain.memory, plain.disk_size, plain.throttle_bps) == (768, 3000, 1_000_000)
    defaults = parse("vm", "up", "x")
    assert (defaults.memory, defaults.disk_size, defaults.throttle_bps) == (512, None, 0)
    assert parse("vm", "up", "x", "--memory", "2GiB").memory == 2048
    assert parse("vm", "disk", "x", "--bps", "3M").bps == 3 << 20
    assert parse("demo", "--memory", "1G").memory == 1024


@pytest.mark.parametrize("argv", [
    ["vm", "up", "x", "--memory", "lots"],
    ["vm", "up", "x", "--memory", "1500K"],  # not a whole MiB
    ["vm", "up", "x", "--throttle-bps", "-1"],
    ["vm", "up", "x", "--channel", "nopath"],
    ["vm", "up", "x", "--backend", "qemu", "--connect", "qemu:///system"],
    ["vm", "up", "../x"],  # an invalid VM description
    ["vm", "ssh", "x", "--timeout", "0"],  # not a positive number of seconds
    ["vm", "disk", "x", "--bps", "fast"],
    ["vm", "disk", "x", "--device", "vdc"],
    ["vm", "up", "x", "--data-disk", "0"],  # an invalid data disk
    ["vm", "up", "x", "--data-disk", "1500K"],
    ["vm", "up", "x", "--data-throttle-bps", "5M"],  # a throttle for no data disk
    ["vm", "frobnicate"],
])
def test_usage_errors_exit_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         argv: list[str]) -> None:
    assert main([*argv[:1], "--state-dir", str(tmp_path / "state"), *argv[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tmemh: error: ") and captured.err.count("\n") == 1
    assert not (tmp_path / "state").exists()


def test_data_disk_options() -> None:
    args = parse("vm", "up", "x", "--data-disk", "2G", "--data-throttle-bps", "5M",
                 "--data-throttle-iops", "100", "--throttle-bps", "1M")
    assert _data_disk(args) == DataDisk(2048, None, DiskThrottle(5 << 20, 100))
    assert (args.throttle_bps, args.throttle_iops) == (1 << 20, 0)  # the root disk's, apart
    assert _data_disk(parse("vm", "up", "x", "--data-disk", "300")) == DataDisk(300)
    based = parse("vm", "up", "x", "--data-disk-base", "/images/tree.raw")
    assert _data_disk(based) == DataDisk(None, Path("/images/tree.raw"))
    assert _data_disk(parse("vm", "up", "x")) is None
    disk = parse("vm", "disk", "x", "--device", "data", "--iops", "50")
    assert (disk.device, disk.bps, disk.iops) == ("data", None, 50)
    assert parse("vm", "disk", "x").device == "root"


def test_a_bad_accelerator_variable_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TMEMH_ACCEL", "bogus")
    assert main(["vm", "--state-dir", str(tmp_path / "state"), "up", "x",
                 "--image", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err == "tmemh: error: TMEMH_ACCEL must be 'kvm' or 'tcg' (or unset to probe), " \
                  "not 'bogus'\n"


def test_commands_on_unknown_vms_fail_clearly(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    for command in (["down", "ghost"], ["diagnose", "ghost"], ["disk", "ghost"],
                    ["ssh", "ghost", "--", "true"]):
        assert main(["vm", "--state-dir", state, *command]) == 1
        assert "no running VM named 'ghost'" in capsys.readouterr().err
    assert main(["vm", "--state-dir", state, "console", "ghost"]) == 1
    assert "no console log" in capsys.readouterr().err
    assert main(["vm", "--state-dir", state, "list"]) == 0
    assert capsys.readouterr().out.split() == ["NAME", "BACKEND", "ACCEL", "SSH", "DATA",
                                                "WHERE"]
    assert not (tmp_path / "state").exists()
