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
from .disks import DATA_SLOT, ROOT_SLOT, DiskSlot
from .errors import InvalidVMSpec
from .spec import ChannelSpec, DiskThrottle, VMSpec

DOMAIN_PREFIX = "tmemh-"
DOMAIN_HASH_CHARS = 8
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
class AttachedDisk:
    """One disk as both renderers attach it: its slot, its qcow2, its initial throttle.

    The data disk passes the guest's discards down (``discard=unmap``): the qcow2 frees
    what the guest's file system (or the agent above it) trims."""

    slot: DiskSlot
    path: Path
    throttle: DiskThrottle
    discard: bool = False


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
    data_disk: Path | None = None  # the data disk's qcow2, exactly when spec.data_disk is set

    def __post_init__(self) -> None:
        if (self.spec.data_disk is None) != (self.data_disk is None):
            raise InvalidVMSpec("a launch needs a data disk file exactly when the spec has "
                                "a data disk")

    @property
    def disks(self) -> list[AttachedDisk]:
        """The root disk, then the data disk if there is one (so the guest sees vda, vdb)."""
        disks = [AttachedDisk(ROOT_SLOT, self.disk, self.spec.throttle)]
        if self.spec.data_disk is not None and self.data_disk is not None:
            disks.append(AttachedDisk(DATA_SLOT, self.data_disk, self.spec.data_disk.throttle,
                                      discard=True))
        return disks

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
             *_disk_options(config.disks),
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


def _disk_options(disks: list[AttachedDisk]) -> list[str]:
    """``-drive`` and ``-device virtio-blk-pci`` for each disk, in slot order."""
    argv = []
    for disk in disks:
        device = f"virtio-blk-pci,drive={disk.slot.drive_id},id={disk.slot.target}"
        if disk.slot.serial:
            device += f",serial={disk.slot.serial}"
        argv += ["-drive", _drive_option(disk), "-device", device]
    return argv


def _drive_option(disk: AttachedDisk) -> str:
    parts = [f"file={_qemu_opt(disk.path)}", "format=qcow2", "if=none", f"id={disk.slot.drive_id}"]
    if disk.discard:
        parts.append("discard=unmap")
    if disk.throttle.bytes_per_second:
        parts.append(f"throttling.bps-total={disk.throttle.bytes_per_second}")
    if disk.throttle.iops:
        parts.append(f"throttling.iops-total={disk.throttle.iops}")
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
        config=config, spec=config.spec, disks=config.disks, machine=MACHINE_TYPE,
        net_id=NET_ID, net_pci_slot=NET_PCI_SLOT,
        domain_type="kvm" if config.accel == KVM else "qemu")
