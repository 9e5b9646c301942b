"""``tmemh vm up|ssh|console|list|down|diagnose|disk``: VMs that outlive the command.

The CLI only parses and delegates to :mod:`tmemh.vm`. Running VMs are found through the state
directory (``--state-dir``, default ``$TMEMH_STATE`` or /run/tmemh).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tmemh.image.build import find_image
from tmemh.image.errors import ImageError
from tmemh.image.manifest import ImageManifest, ManifestError
from tmemh.ssh import SSHError
from tmemh.vm import ChannelSpec, DiskThrottle, VirtualMachine, VMError, VMSpec, reap_stale
from tmemh.vm.machine import read_console_tail
from tmemh.vm.state import StateDir, default_state_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    logging.getLogger("paramiko").setLevel(logging.WARNING)  # no per-connection chatter
    parser = subparsers.add_parser("vm", help="boot, reach and tear down guest VMs")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where running VMs are recorded (default {default_state_dir()})")
    actions = parser.add_subparsers(dest="vm_command", required=True)

    up = actions.add_parser("up", help="boot a VM and leave it running")
    up.add_argument("name")
    up.add_argument("--memory", type=int, default=512, help="MiB (default 512)")
    up.add_argument("--cpus", type=int, default=1)
    up.add_argument("--disk-size", type=int, default=None, help="root disk MiB (default: image)")
    up.add_argument("--backend", choices=("auto", "qemu", "libvirt"), default="auto",
                    help="auto = libvirt when a daemon answers, else qemu")
    up.add_argument("--connect", metavar="URI", default=None, help="libvirt URI")
    up.add_argument("--kernel-arg", action="append", default=[], metavar="WORD",
                    help="append a word to the kernel command line (repeatable)")
    up.add_argument("--throttle-bps", type=int, default=0, help="disk bytes/s (0 = unlimited)")
    up.add_argument("--throttle-iops", type=int, default=0, help="disk IOPS (0 = unlimited)")
    up.add_argument("--channel", action="append", default=[], metavar="NAME=PATH[,connect]",
                    help="virtio-serial port NAME on unix socket PATH (QEMU listens unless "
                         "',connect' is given); repeatable")
    up.add_argument("--ssh-port", type=int, default=None, help="default: a free port")
    up.add_argument("--image", type=Path, default=None,
                    help="image directory (default: the current built image)")
    up.set_defaults(func=_up)

    ssh = actions.add_parser("ssh", help="run a command in the VM: vm ssh NAME -- CMD")
    ssh.add_argument("name")
    ssh.add_argument("--timeout", type=float, default=600.0)
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=_ssh)

    console = actions.add_parser("console", help="print the VM's serial console log")
    console.add_argument("name")
    console.add_argument("--lines", type=int, default=None, help="only the last N lines")
    console.set_defaults(func=_console)

    listing = actions.add_parser("list", help="list running VMs (stale records are removed)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)

    down = actions.add_parser("down", help="stop a VM and remove its files")
    down.add_argument("name")
    down.set_defaults(func=_down)

    diagnose = actions.add_parser("diagnose", help="SysRq task dumps to the console, printed")
    diagnose.add_argument("name")
    diagnose.add_argument("--keys", default="tw", help="SysRq letters (default tw)")
    diagnose.set_defaults(func=_diagnose)

    disk = actions.add_parser("disk", help="show (and with --bps/--iops set) disk throttling")
    disk.add_argument("name")
    disk.add_argument("--bps", type=int, default=None, help="new bytes/s limit (0 = none)")
    disk.add_argument("--iops", type=int, default=None, help="new IOPS limit (0 = none)")
    disk.set_defaults(func=_disk)


def _fail(exc: Exception) -> int:
    print(f"tmemh vm: error: {exc}", file=sys.stderr)
    return 1


def _parse_channel(text: str) -> ChannelSpec:
    name, sep, rest = text.partition("=")
    path, _, mode = rest.partition(",")
    if not sep or not path:
        raise VMError(f"--channel {text!r}: expected NAME=PATH[,connect]")
    if mode not in ("", "connect"):
        raise VMError(f"--channel {text!r}: unknown mode {mode!r}")
    return ChannelSpec(name, Path(path), "connect" if mode else "server")


def _load_image(directory: Path | None) -> ImageManifest:
    return ImageManifest.load(directory) if directory else find_image()


def _up(args: argparse.Namespace) -> int:
    try:
        spec = VMSpec(name=args.name, memory_mib=args.memory, vcpus=args.cpus,
                      disk_size_mib=args.disk_size, kernel_args=tuple(args.kernel_arg),
                      throttle=DiskThrottle(args.throttle_bps, args.throttle_iops),
                      channels=tuple(_parse_channel(c) for c in args.channel),
                      ssh_port=args.ssh_port)
        image = _load_image(args.image)
        vm = VirtualMachine(spec, image, backend=args.backend, uri=args.connect,
                            state_dir=args.state_dir)
        vm.launch()
    except (VMError, ImageError, ManifestError, SSHError) as exc:
        return _fail(exc)
    record = vm.record
    assert record is not None
    print(f"{record.name}: up ({record.backend}/{record.accel}); ssh -i {record.ssh_key} "
          f"-p {record.ssh_port} -o StrictHostKeyChecking=no {record.ssh_user}@127.0.0.1")
    return 0


def _ssh(args: argparse.Namespace) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        return _fail(VMError("no command given: tmemh vm ssh NAME -- CMD"))
    try:
        result = VirtualMachine.attach(args.name, args.state_dir).run(
            " ".join(words), timeout=args.timeout)
    except (VMError, SSHError) as exc:
        return _fail(exc)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.exit_code


def _console(args: argparse.Namespace) -> int:
    path = StateDir(args.state_dir).run_dir(args.name) / "console.log"
    if not path.is_file():
        return _fail(VMError(f"no console log for VM {args.name!r} at {path}"))
    if args.lines is None:
        sys.stdout.write(path.read_bytes().decode(errors="replace").replace("\r", ""))
    else:
        print(read_console_tail(path, args.lines))
    return 0


def _list(args: argparse.Namespace) -> int:
    states = StateDir(args.state_dir)
    try:
        reap_stale(states)
        records = [r for r in map(states.load, states.names()) if r is not None]
    except VMError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps([vars(r) for r in records], indent=2))
        return 0
    print(f"{'NAME':20} {'BACKEND':8} {'ACCEL':5} {'SSH':>5}  WHERE")
    for r in records:
        where = f"pid {r.handle.get('pid')}" if r.backend == "qemu" else \
            f"{r.handle.get('domain')} @ {r.handle.get('uri')}"
        print(f"{r.name:20} {r.backend:8} {r.accel:5} {r.ssh_port:>5}  {where}")
    return 0


def _down(args: argparse.Namespace) -> int:
    try:
        VirtualMachine.attach(args.name, args.state_dir).shutdown()
    except VMError as exc:
        return _fail(exc)
    print(f"{args.name}: down")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    try:
        output = VirtualMachine.attach(args.name, args.state_dir).diagnose(args.keys)
    except VMError as exc:
        return _fail(exc)
    sys.stdout.write(output)
    return 0


def _disk(args: argparse.Namespace) -> int:
    try:
        vm = VirtualMachine.attach(args.name, args.state_dir)
        if args.bps is not None or args.iops is not None:
            current = vm.disk_throttle()
            vm.set_disk_throttle(DiskThrottle(
                current.bytes_per_second if args.bps is None else args.bps,
                current.iops if args.iops is None else args.iops))
        throttle, stats = vm.disk_throttle(), vm.block_stats()
    except VMError as exc:
        return _fail(exc)
    print(f"throttle: {throttle.bytes_per_second} B/s, {throttle.iops} IOPS (0 = unlimited)")
    print(f"read: {stats.read_bytes} B in {stats.read_ops} ops; "
          f"written: {stats.write_bytes} B in {stats.write_ops} ops")
    return 0
