"""One VMSpec renders to a QEMU command line and a libvirt domain XML that agree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

from tmemh.vm import ChannelSpec, DiskThrottle, VMSpec
from tmemh.vm.render import LaunchConfig, domain_name, domain_xml, qemu_command_line

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def make_config(tmp_path: Path, accel: str = "tcg", **spec_args: object) -> LaunchConfig:
    spec = VMSpec(
        name="render-me", memory_mib=768, vcpus=2, kernel_args=("init=/bin/sh", "loglevel=7"),
        throttle=DiskThrottle(20_000_000, 200),
        channels=(ChannelSpec("org.tmem.0", tmp_path / "srv.sock", "server"),
                  ChannelSpec("org.tmem.1", tmp_path / "cli.sock", "connect")),
        **spec_args)  # type: ignore[arg-type]
    return LaunchConfig(spec=spec, kernel=tmp_path / "vmlinuz", initramfs=tmp_path / "initrd.gz",
                        disk=tmp_path / "disk.qcow2", base_cmdline="console=ttyS0 root=/dev/vda",
                        console_log=tmp_path / "console.log", qmp_socket=tmp_path / "qmp.sock",
                        ssh_port=2222, accel=accel)


def option_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def test_command_line_carries_the_spec(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    argv = qemu_command_line(config)
    assert argv[0] == "qemu-system-x86_64"
    assert option_after(argv, "-m") == ["768"] and option_after(argv, "-smp") == ["2"]
    assert option_after(argv, "-accel") == ["tcg"] and "-cpu" not in argv
    assert option_after(argv, "-append") == [
        "console=ttyS0 root=/dev/vda sysrq_always_enabled=1 init=/bin/sh loglevel=7"]
    drive = option_after(argv, "-drive")[0]
    assert "throttling.bps-total=20000000" in drive and "throttling.iops-total=200" in drive
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in option_after(argv, "-netdev")[0]
    chardevs = option_after(argv, "-chardev")
    assert f"path={tmp_path / 'srv.sock'},server=on,wait=off" in chardevs[1]
    assert f"path={tmp_path / 'cli.sock'},server=off,reconnect=1" in chardevs[2]
    ports = [d for d in option_after(argv, "-device") if d.startswith("virtserialport")]
    assert [p.rsplit("name=", 1)[1] for p in ports] == ["org.tmem.0", "org.tmem.1"]
    assert "-no-reboot" in argv


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    argv = qemu_command_line(make_config(tmp_path, accel="kvm"))
    assert option_after(argv, "-cpu") == ["host"]
    root = ET.fromstring(domain_xml(make_config(tmp_path, accel="kvm")))
    assert root.get("type") == "kvm"


def test_unlimited_disk_has_no_throttle(tmp_path: Path) -> None:
    config = make_config(tmp_path, ssh_port=None)
    plain = replace(config, spec=VMSpec(name="plain"))
    assert "throttling" not in option_after(qemu_command_line(plain), "-drive")[0]
    assert ET.fromstring(domain_xml(plain)).find("devices/disk/iotune") is None
    assert "virtio-serial-pci,id=vser0" not in qemu_command_line(plain)


def test_commas_in_paths_are_escaped_for_qemu(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    config = make_config(tmp_path)
    config = replace(config, disk=odd / "disk.qcow2")
    drive = option_after(qemu_command_line(config), "-drive")[0]
    assert f"file={tmp_path}/a,,b/disk.qcow2" in drive


def test_domain_xml_carries_the_same_spec(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    root = ET.fromstring(domain_xml(config))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == domain_name("render-me", tmp_path)
    assert root.findtext("memory") == "768" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == str(tmp_path / "vmlinuz")
    assert root.findtext("os/cmdline") == qemu_command_line(config)[
        qemu_command_line(config).index("-append") + 1]
    disk = root.find("devices/disk")
    assert disk.find("source").get("file") == str(tmp_path / "disk.qcow2")
    assert disk.find("target").get("dev") == "vda"
    assert disk.findtext("iotune/total_bytes_sec") == "20000000"
    assert disk.findtext("iotune/total_iops_sec") == "200"
    assert root.find("devices/serial/source").get("path") == str(tmp_path / "console.log")
    channels = root.findall("devices/channel")
    assert [(c.find("source").get("mode"), c.find("source").get("path"),
             c.find("target").get("name")) for c in channels] == [
        ("bind", str(tmp_path / "srv.sock"), "org.tmem.0"),
        ("connect", str(tmp_path / "cli.sock"), "org.tmem.1")]
    args = [a.get("value") for a in root.iter(f"{QEMU_NS}arg")]
    assert "user,id=tmemnet0,hostfwd=tcp:127.0.0.1:2222-:22" in args
    assert root.find("on_reboot").text == "destroy"


def test_xml_special_characters_are_escaped(tmp_path: Path) -> None:
    odd = tmp_path / "a&b<c>'"
    config = make_config(tmp_path)
    config = replace(config, kernel=odd / "vmlinuz")
    assert ET.fromstring(domain_xml(config)).findtext("os/kernel") == str(odd / "vmlinuz")


def test_domain_names_differ_between_state_directories(tmp_path: Path) -> None:
    """libvirt has one namespace per daemon: VMs of one name in two state directories (two
    users, or two test runs at once) must not collide, and one directory keeps one name."""
    first = domain_name("demo", tmp_path / "a" / "demo")
    assert first.startswith("tmemh-demo-")
    assert first == domain_name("demo", tmp_path / "a" / "demo")
    assert first != domain_name("demo", tmp_path / "b" / "demo")
