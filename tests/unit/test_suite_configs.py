"""Memory configurations against a fake guest: what they say they need, the commands they
run, and SKIP where the guest or the host cannot do it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemh.ssh import CommandResult
from tmemh.suite.configkinds import make_configuration
from tmemh.suite.configs import CellHost
from tmemh.suite.errors import ConfigurationUnavailable
from tmemh.suite.guestshell import GuestShell
from tmemh.vm import VMSpec


class FakeGuest:
    """Answers commands from a table of (substring, exit code, stdout); records them."""

    def __init__(self, answers: list[tuple[str, int, str]]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    def run(self, command: str, timeout: float | None = None,
            check: bool = False) -> CommandResult:
        self.commands.append(command)
        for pattern, code, out in self.answers:
            if pattern in command:
                return CommandResult(command, code, out, "")
        return CommandResult(command, 0, "", "")

    def upload(self, sources: object, dest: str) -> list[str]:
        return []

    def download(self, sources: object, dest: Path) -> list[Path]:
        return []


def shell(tmp_path: Path, answers: list[tuple[str, int, str]]) -> tuple[GuestShell, FakeGuest]:
    fake = FakeGuest(answers)
    return GuestShell(fake, tmp_path / "guest.log", memory_mib=256), fake


def test_disk_swap_makes_a_swap_file_twice_the_memory(tmp_path: Path) -> None:
    guest, fake = shell(tmp_path, [])
    facts = make_configuration("disk-swap").prepare(guest)
    assert facts == {"swap_file": "/swapfile", "swap_mib": 512}
    assert "fallocate -l 512M /swapfile" in fake.commands[0] and "swapon" in fake.commands[0]
    assert "fallocate -l 512M" in (tmp_path / "guest.log").read_text()


def test_zswap_sets_zsmalloc_lzo_and_checks_what_the_kernel_took(tmp_path: Path) -> None:
    settings = [("/enabled", 0, "Y\n"), ("/zpool", 0, "zsmalloc\n"), ("/compressor", 0, "lzo\n"),
                ("/max_pool_percent", 0, "20\n")]
    guest, fake = shell(tmp_path, [(f"cat /sys/module/zswap/parameters{name}", code, out)
                                   for name, code, out in settings])
    config = make_configuration("zswap-zsmalloc")
    facts = config.prepare(guest)
    assert facts["zswap"] == {"enabled": "Y", "zpool": "zsmalloc", "compressor": "lzo",
                              "max_pool_percent": "20"}
    assert "modprobe zsmalloc" in fake.commands
    assert any("mount -t debugfs" in c for c in fake.commands)
    assert "echo zsmalloc > /sys/module/zswap/parameters/zpool" in fake.commands


def test_zswap_skips_when_the_module_cannot_load_or_the_setting_does_not_take(
        tmp_path: Path) -> None:
    guest, _ = shell(tmp_path, [("modprobe zsmalloc", 1, "")])
    with pytest.raises(ConfigurationUnavailable, match="kernel module zsmalloc"):
        make_configuration("zswap-zsmalloc").prepare(guest)
    guest, _ = shell(tmp_path, [("cat /sys/module/zswap/parameters/zpool", 0, "zbud\n"),
                                ("cat /sys/module/zswap/parameters/enabled", 0, "Y\n"),
                                ("cat /sys/module/zswap/parameters/compressor", 0, "lzo\n")])
    with pytest.raises(ConfigurationUnavailable, match="did not take"):
        make_configuration("zswap-zsmalloc").prepare(guest)


def test_zram_checks_the_algorithm_and_sizes_the_disk(tmp_path: Path) -> None:
    guest, fake = shell(tmp_path, [("comp_algorithm", 0, "lzo [lzo-rle] lz4\n")])
    facts = make_configuration("zram").prepare(guest)
    assert facts == {"zram_algorithm": "lzo", "zram_disksize": 384 << 20}
    assert any("swapon -p 100 /dev/zram0" in c for c in fake.commands)
    guest, _ = shell(tmp_path, [("comp_algorithm", 0, "lzo-rle\n")])
    with pytest.raises(ConfigurationUnavailable, match="not lzo"):
        make_configuration("zram").prepare(guest)


def test_what_configurations_need() -> None:
    assert make_configuration("zswap").needs.guest_modules == ()
    assert make_configuration("zram").needs.guest_modules == ("zram",)
    tmem_swap, tmem = make_configuration("tmem-swap"), make_configuration("tmem")
    assert tmem_swap.needs.daemon and tmem_swap.needs.swap_shim
    assert tmem.needs.page_cache_path
    assert tmem.unavailable() is None  # the agent has its block cache
    assert make_configuration("disk-swap").unavailable() is None


class FakeDaemon:
    control = "/run/tmemd-test/control.sock"

    def admit(self, vm: str) -> Path:
        return Path(f"/run/tmemd-test/vms/{vm}.sock")


def test_tmem_swap_hands_its_daemon_to_the_vm_layer() -> None:
    config = make_configuration("tmem-swap")
    assert config.unavailable() is None
    assert config.daemon_args(256) == ["--memory-limit", "512M"]
    host = CellHost("c1", FakeDaemon())  # type: ignore[arg-type]
    spec = VMSpec(name="c1", memory_mib=256)
    assert config.vm_spec(spec, host) is spec
    assert config.vm_options(host) == {"tmem_control": Path("/run/tmemd-test/control.sock")}
    with pytest.raises(ConfigurationUnavailable, match="needs a tmemd"):
        config.vm_options(CellHost("c1", None))
