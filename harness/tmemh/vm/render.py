"""Render one launch description to a QEMU command line or to a libvirt domain XML.

Both renderers read the same :class:`LaunchConfig` (a :class:`VMSpec` plus the concrete host
paths, port and accelerator chosen at launch), so the two backends boot the same machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .accel import KVM, QEMU_BINARY
from .spec import ChannelSpec, VMSpec

DOMAIN_PREFIX = "tmemh-"
DOMAIN_HASH_CHARS = 8
DISK_DEVICE_ID = "vda"  # qdev id (QEMU) and target dev (libvirt) of the root disk
DISK_DRIVE_ID = "drive-vda"
NET_ID = "tmemnet0"
NET_PCI_SLOT = "0x10"  # libvirt only: the pass-through NIC must not take a slot libvirt assigns
MACHINE_TYPE = "pc"
GUEST_SSH_PORT = 22
# Words the VM side always appends: SysRq must dump tasks for `tmemh vm diagnose`.
DEFAULT_KERNEL_ARGS: tuple[str, ...] = ("sysrq_always_enabled=1",)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("tmemh", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("xml", "j2"), default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class LaunchConfig:
    """Everything needed to start one VM, with every host-side choice made."""

    spec: VMSpec
    kernel: Path
    initramfs: Path
    disk: Path  # the VM's own qcow2 overlay
    base_cmdline: str
    console_log: Path
    qmp_socket: Path
    ssh_port: int
    accel: str
    emulator: str = QEMU_BINARY

    @property
    def cmdline(self) -> str:
        words = [self.base_cmdline, *DEFAULT_KERNEL_ARGS, *self.spec.kernel_args]
        return " ".join(words).strip()

    @property
    def domain_name(self) -> str:
        return domain_name(self.spec.name, self.disk.parent)

    @property
    def hostfwd(self) -> str:
        return f"tcp:127.0.0.1:{self.ssh_port}-:{GUEST_SSH_PORT}"

    @property
    def user_netdev(self) -> str:
        return f"user,id={NET_ID},hostfwd={self.hostfwd}"


def domain_name(vm_name: str, vm_dir: Path) -> str:
    """The libvirt domain name of VM ``vm_name`` whose files live in ``vm_dir``.

    libvirt's namespace is one per daemon, shared by every user and state directory on the
    host, so the name carries a short hash of the VM's directory: two state directories (two
    users, two test runs at once) can each have a VM called ``demo`` without colliding.
    """
    digest = hashlib.sha256(str(vm_dir.absolute()).encode()).hexdigest()[:DOMAIN_HASH_CHARS]
    return f"{DOMAIN_PREFIX}{vm_name}-{digest}"


def qemu_command_line(config: LaunchConfig) -> list[str]:
    """The argv that starts the VM with QEMU directly (QMP on ``config.qmp_socket``)."""
    spec = config.spec
    argv = [config.emulator, "-name", spec.name, "-machine", MACHINE_TYPE,
            "-accel", config.accel]
    if config.accel == KVM:
        argv += ["-cpu", "host"]
    argv += ["-m", str(spec.memory_mib), "-smp", str(spec.vcpus),
             "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
             "-kernel", str(config.kernel), "-initrd", str(config.initramfs),
             "-append", config.cmdline,
             "-chardev", f"file,id=console0,path={_qemu_opt(config.console_log)}",
             "-serial", "chardev:console0",
             "-drive", _drive_option(config),
             "-device", f"virtio-blk-pci,drive={DISK_DRIVE_ID},id={DISK_DEVICE_ID}",
             "-netdev", config.user_netdev,
             "-device", f"virtio-net-pci,netdev={NET_ID}",
             "-device", "virtio-rng-pci",  # sshd needs entropy early: ~1 s faster to SSH
             "-qmp", f"unix:{_qemu_opt(config.qmp_socket)},server=on,wait=off"]
    if spec.channels:
        argv += ["-device", "virtio-serial-pci,id=vser0"]
    for index, channel in enumerate(spec.channels):
        argv += ["-chardev", _channel_chardev(index, channel),
                 "-device", f"virtserialport,bus=vser0.0,chardev=chan{index},name={channel.name}"]
    return argv


def _drive_option(config: LaunchConfig) -> str:
    parts = [f"file={_qemu_opt(config.disk)}", "format=qcow2", "if=none", f"id={DISK_DRIVE_ID}"]
    throttle = config.spec.throttle
    if throttle.bytes_per_second:
        parts.append(f"throttling.bps-total={throttle.bytes_per_second}")
    if throttle.iops:
        parts.append(f"throttling.iops-total={throttle.iops}")
    return ",".join(parts)


def _channel_chardev(index: int, channel: ChannelSpec) -> str:
    path = _qemu_opt(channel.socket_path)
    if channel.mode == "server":
        return f"socket,id=chan{index},path={path},server=on,wait=off"
    return f"socket,id=chan{index},path={path},server=off,reconnect=1"


def _qemu_opt(path: Path) -> str:
    """A path as a QEMU option value: commas are escaped by doubling them."""
    return str(path).replace(",", ",,")


def domain_xml(config: LaunchConfig) -> str:
    """The libvirt domain XML (type 'qemu' or 'kvm', direct kernel boot)."""
    return _templates.get_template("domain.xml.j2").render(
        config=config, spec=config.spec, disk_target=DISK_DEVICE_ID, machine=MACHINE_TYPE,
        net_id=NET_ID, net_pci_slot=NET_PCI_SLOT,
        domain_type="kvm" if config.accel == KVM else "qemu")
