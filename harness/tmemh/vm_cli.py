"""``tmemh vm up|status|ssh|cp|ssh-config|console|list|down|diagnose|disk``: VMs that
outlive the command.

``vm up --tmem`` wires the VM to a running tmemd (admitted by name, port ``org.tmem.0`` to its
own socket; :mod:`tmemh.vm_tmem`), ``vm status`` shows the guest agent beside tmemd's view.
``vm up --data-disk SIZE [--data-disk-base IMAGE]`` gives the VM a second disk, /dev/vdb
(serial ``tmemh-data``); ``vm disk NAME --device data`` throttles it and shows its counters.

The CLI only parses and delegates to :mod:`tmemh.vm`. Running VMs are found through the state
directory (``--state-dir``, default ``$TMEMH_STATE`` or /run/tmemh). Errors propagate to
:func:`tmemd.clikit.run` (through ``tmemh.cli``), which prints them in one line: bad values
(InvalidVMSpec, a bad ``TMEMH_ACCEL``) exit 2, VM, image and SSH failures exit 1;
``vm ssh`` exits as ssh does (:mod:`tmemh.vm_ssh_cli`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tmemd.clikit import UsageError, mib_arg, new_table, print_table, size_arg
from tmemd.service.config import DEFAULT_CONTROL
from tmemh.image.build import find_image
from tmemh.image.manifest import ImageManifest
from tmemh.vm import (
    ChannelSpec,
    DataDisk,
    DiskThrottle,
    InvalidVMSpec,
    VirtualMachine,
    VMNotFound,
    VMSpec,
    reap_stale,
)
from tmemh.vm.accel import ACCEL_ENV, forced_accelerator
from tmemh.vm.disks import DATA_DISK, DATA_SLOT, DISK_NAMES, ROOT_DISK, describe_data_disk
from tmemh.vm.machine import read_console_tail
from tmemh.vm.state import StateDir, default_state_dir
from tmemh.vm.tmemadmission import TMEM_PORT
from tmemh.vm_ssh_cli import add_parsers as add_ssh_parsers
from tmemh.vm_tmem import (
    AGENT_WAIT_S,
    agent_status,
    control_socket,
    daemon_view,
    require_daemon,
    status_rows,
    swap_report,
)

MEMORY_HELP = ("guest memory: a size like 512M or 1G; a plain number is MiB, as QEMU's -m "
               "reads it")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    logging.getLogger("paramiko").setLevel(logging.WARNING)  # no per-connection chatter
    parser = subparsers.add_parser(
        "vm", help="boot, reach and tear down guest VMs",
        description="VMs that outlive the command; later commands find them by name.",
        epilog=f"{ACCEL_ENV}=kvm|tcg skips the KVM probe.")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="where running VMs are recorded "
                             f"(default: $TMEMH_STATE or {default_state_dir()})")
    actions = parser.add_subparsers(dest="vm_command", required=True, metavar="COMMAND")

    up = actions.add_parser("up", help="boot a VM and leave it running")
    up.add_argument("name", help="the VM's name")
    up.add_argument("--memory", type=mib_arg, default="512M", metavar="SIZE", help=MEMORY_HELP)
    up.add_argument("--cpus", type=int, default=1, metavar="N", help="virtual CPUs")
    up.add_argument("--disk-size", type=mib_arg, default=None, metavar="SIZE",
                    help="virtual size of the root disk, e.g. 4G; a plain number is MiB "
                         "(default: the image's)")
    up.add_argument("--backend", choices=("auto", "qemu", "libvirt"), default="auto",
                    help="auto = libvirt when a daemon answers, else qemu")
    up.add_argument("--connect", metavar="URI", default=None,
                    help="libvirt URI (with --backend libvirt or auto)")
    up.add_argument("--kernel-arg", action="append", default=[], metavar="WORD",
                    help="append a word to the kernel command line (repeatable)")
    _add_throttle_options(up, "--throttle", "root disk")
    up.add_argument("--data-disk", type=mib_arg, default=None, metavar="SIZE",
                    help=f"give the VM a data disk of this size, e.g. 2G (a plain number is "
                         f"MiB): an empty qcow2 in the VM's directory, removed at `vm down`; "
                         f"the guest sees /dev/{DATA_SLOT.target}, serial {DATA_SLOT.serial}")
    up.add_argument("--data-disk-base", type=Path, default=None, metavar="IMAGE",
                    help="an existing raw or qcow2 image the data disk starts as (copy on "
                         "write: the image is only read); size: --data-disk or the image's")
    _add_throttle_options(up, "--data-throttle", "data disk")
    up.add_argument("--channel", type=_parse_channel, action="append", default=[],
                    metavar="NAME=PATH[,connect]",
                    help="virtio-serial port NAME on unix socket PATH (QEMU listens unless "
                         "',connect' is given); repeatable")
    up.add_argument("--ssh-port", type=int, default=None, metavar="PORT",
                    help="host port forwarded to the guest's SSH (default: a free port)")
    up.add_argument("--image", type=Path, default=None, metavar="DIR",
                    help="image directory (default: the current built image)")
    up.add_argument("--tmem", nargs="?", const=DEFAULT_CONTROL, default=None,
                    metavar="SOCKET-OR-DIR",
                    help="wire the VM to a running tmemd: admit it by name over this control "
                         "socket (or the control.sock in this directory; default "
                         f"{DEFAULT_CONTROL}) and connect port {TMEM_PORT} to its own socket; "
                         "then report whether the guest swaps through tmem")
    up.add_argument("--tmem-wait", type=float, default=AGENT_WAIT_S, metavar="S",
                    help="with --tmem: seconds to wait for the guest agent's swap device")
    up.set_defaults(func=_up)

    status = actions.add_parser(
        "status", help="the guest agent's tmem status beside tmemd's view of the VM")
    status.add_argument("name", help="the VM's name")
    status.add_argument("--json", action="store_true", help="both views as JSON")
    status.set_defaults(func=_status)

    add_ssh_parsers(actions)  # ssh, cp, ssh-config

    console = actions.add_parser("console", help="print the VM's serial console log")
    console.add_argument("name", help="the VM's name")
    console.add_argument("--lines", type=int, default=None, metavar="N",
                         help="only the last N lines (default: all)")
    console.set_defaults(func=_console)

    listing = actions.add_parser("list", help="list running VMs (stale records are removed)")
    listing.add_argument("--json", action="store_true", help="the records as JSON")
    listing.set_defaults(func=_list)

    down = actions.add_parser(
        "down", help="stop a VM and remove its files",
        description="Stop a VM and remove its files. A VM booted with --tmem is dismissed "
                    "from tmemd; its pages stay in tmemd (a VM admitted again with the same "
                    "boot id resumes) until `tmemd ctl forget NAME`.")
    down.add_argument("name", help="the VM's name")
    down.set_defaults(func=_down)

    diagnose = actions.add_parser("diagnose", help="SysRq task dumps to the console, printed")
    diagnose.add_argument("name", help="the VM's name")
    diagnose.add_argument("--keys", default="tw", help="SysRq letters")
    diagnose.set_defaults(func=_diagnose)

    disk = actions.add_parser(
        "disk", help="show (and with --bps/--iops set) a disk's throttling and counters")
    disk.add_argument("name", help="the VM's name")
    disk.add_argument("--device", choices=DISK_NAMES, default=ROOT_DISK,
                      help=f"which disk: {ROOT_DISK} (/dev/vda) or {DATA_DISK} "
                           f"(/dev/{DATA_SLOT.target}, from vm up --data-disk)")
    _add_throttle_options(disk, "", "new limit", default=None)
    disk.set_defaults(func=_disk)


def _add_throttle_options(parser: argparse.ArgumentParser, prefix: str, what: str,
                          default: int | None = 0) -> None:
    """``PREFIX-bps SIZE`` and ``PREFIX-iops N``: one disk's throttle (0 = unlimited)."""
    parser.add_argument(f"{prefix or '-'}-bps", type=size_arg, default=default, metavar="SIZE",
                        help=f"{what}: bytes per second, e.g. 20M (0 = unlimited)")
    parser.add_argument(f"{prefix or '-'}-iops", type=int, default=default, metavar="N",
                        help=f"{what}: I/O operations per second (0 = unlimited)")


def _parse_channel(text: str) -> ChannelSpec:
    """argparse type for ``--channel NAME=PATH[,connect]``."""
    name, sep, rest = text.partition("=")
    path, _, mode = rest.partition(",")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH[,connect]")
    if mode not in ("", "connect"):
        raise argparse.ArgumentTypeError(f"{text!r}: unknown mode {mode!r}")
    try:
        return ChannelSpec(name, Path(path), "connect" if mode else "server")
    except InvalidVMSpec as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _data_disk(args: argparse.Namespace) -> DataDisk | None:
    """The data disk ``vm up`` asks for (None: no --data-disk, no --data-disk-base)."""
    throttle = DiskThrottle(args.data_throttle_bps, args.data_throttle_iops)
    if args.data_disk is None and args.data_disk_base is None:
        if not throttle.unlimited:
            raise UsageError("--data-throttle-* needs a data disk (--data-disk SIZE)")
        return None
    return DataDisk(args.data_disk, args.data_disk_base, throttle)


def _load_image(directory: Path | None) -> ImageManifest:
    return ImageManifest.load(directory) if directory else find_image()


def _up(args: argparse.Namespace) -> int:
    if args.connect and args.backend == "qemu":
        raise UsageError("--connect URI only applies to the libvirt backend")
    forced_accelerator()  # a bad TMEMH_ACCEL is a usage error before anything starts
    control = None
    if args.tmem is not None:
        if any(channel.name == TMEM_PORT for channel in args.channel):
            raise UsageError(f"--tmem gives the VM port {TMEM_PORT}; drop --channel {TMEM_PORT}")
        control = control_socket(args.tmem)
        require_daemon(control)  # no daemon: one line, nothing started
    # A bad value (InvalidVMSpec) exits 2; VMError, ImageError, ManifestError, SSHError exit 1.
    spec = VMSpec(name=args.name, memory_mib=args.memory, vcpus=args.cpus,
                  disk_size_mib=args.disk_size, kernel_args=tuple(args.kernel_arg),
                  throttle=DiskThrottle(args.throttle_bps, args.throttle_iops),
                  channels=tuple(args.channel), ssh_port=args.ssh_port,
                  data_disk=_data_disk(args))
    image = _load_image(args.image)
    vm = VirtualMachine(spec, image, backend=args.backend, uri=args.connect,
                        state_dir=args.state_dir, tmem_control=control)
    vm.launch()  # a failed launch dismisses the VM from tmemd again
    record = vm.record
    assert record is not None
    print(f"{record.name}: up ({record.backend}/{record.accel}); ssh -i {record.ssh_key} "
          f"-p {record.ssh_port} -o StrictHostKeyChecking=no {record.ssh_user}@127.0.0.1",
          flush=True)
    if record.data_disk is not None:
        print(f"{record.name}: data disk {describe_data_disk(record.data_disk)}", flush=True)
    if record.tmem is not None:
        print(f"{record.name}: admitted to tmemd at {record.tmem['control']}; port "
              f"{record.tmem['port']} -> {record.tmem['socket']}", flush=True)
        print(f"{record.name}: {swap_report(vm, args.tmem_wait)[1]}")
    return 0


def _status(args: argparse.Namespace) -> int:
    vm = VirtualMachine.attach(args.name, args.state_dir)
    assert vm.record is not None
    agent, daemon = agent_status(vm), daemon_view(vm.name, vm.record.tmem)
    if args.json:
        print(json.dumps({"vm": vm.name, "data_disk": vm.record.data_disk, "agent": agent,
                          "tmemd": daemon}, indent=2))
        return 0
    print(f"data disk: {describe_data_disk(vm.record.data_disk)}")
    table = new_table("", "GUEST AGENT", "TMEMD")
    for row in status_rows(agent, daemon):
        table.add_row(*row)
    print_table(table)
    return 0


def _console(args: argparse.Namespace) -> int:
    path = StateDir(args.state_dir).run_dir(args.name) / "console.log"
    if not path.is_file():
        raise VMNotFound(f"no console log for VM {args.name!r} at {path}")
    if args.lines is None:
        sys.stdout.write(path.read_bytes().decode(errors="replace").replace("\r", ""))
    else:
        print(read_console_tail(path, args.lines))
    return 0


def _list(args: argparse.Namespace) -> int:
    states = StateDir(args.state_dir)
    reap_stale(states)
    records = [r for r in map(states.load, states.names()) if r is not None]
    if args.json:
        print(json.dumps([vars(r) for r in records], indent=2))
        return 0
    table = new_table("NAME", "BACKEND", "ACCEL", "SSH", "DATA", "WHERE", right=("SSH", "DATA"))
    for r in records:
        where = f"pid {r.handle.get('pid')}" if r.backend == "qemu" else \
            f"{r.handle.get('domain')} @ {r.handle.get('uri')}"
        table.add_row(r.name, r.backend, r.accel, str(r.ssh_port),
                      describe_data_disk(r.data_disk, brief=True), where)
    print_table(table)
    return 0


def _down(args: argparse.Namespace) -> int:
    vm = VirtualMachine.attach(args.name, args.state_dir)
    vm.shutdown()
    print(f"{args.name}: down")
    if vm.tmem_dismissal:
        print(f"{args.name}: {vm.tmem_dismissal} (its pages stay there until "
              f"`tmemd ctl forget {args.name}`)")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    output = VirtualMachine.attach(args.name, args.state_dir).diagnose(args.keys)
    sys.stdout.write(output)
    return 0


def _disk(args: argparse.Namespace) -> int:
    vm = VirtualMachine.attach(args.name, args.state_dir)
    disk = args.device
    if args.bps is not None or args.iops is not None:
        current = vm.disk_throttle(disk)
        vm.set_disk_throttle(DiskThrottle(
            current.bytes_per_second if args.bps is None else args.bps,
            current.iops if args.iops is None else args.iops), disk)
    throttle, stats = vm.disk_throttle(disk), vm.block_stats(disk)
    print(f"disk: {disk}")
    print(f"throttle: {throttle.bytes_per_second} B/s, {throttle.iops} IOPS (0 = unlimited)")
    print(f"read: {stats.read_bytes} B in {stats.read_ops} ops; "
          f"written: {stats.write_bytes} B in {stats.write_ops} ops")
    return 0
