"""``tmemh demo``: the main job. The store benchmark, then a real guest paging through tmemd.

Steps, each recorded in a fresh run directory under ``--results`` (default ``results/``):
1. ``tmemd bench`` in process: compressor and page-store rates and density (bench.json);
2. the guest image, built from Debian packages or taken from the cache;
3. a ``tmemd serve`` daemon on private sockets that admits the VM (a socket of the VM's
   own: every connection there is that VM), and the VM, whose virtio-serial port connects
   to that socket (QEMU directly, TCG when KVM does not work);
4. in the guest, over SSH, ``tmem_agent.tools.pagecheck``: real guest pages stored in a persistent
   pool over virtio-serial, read back and compared byte for byte, then flushed
   (pagecheck.json);
5. the daemon's statistics over its control socket (daemon-stats.json), then teardown.
The resolved options go to config.json and a summary to summary.json. Exit status 0 only
when every step passed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from tmemd.clikit import mib_arg
from tmemd.service.controlclient import ControlClient
from tmemd.tools.bench import run_bench

from .daemon import running_daemon
from .image.build import build_image
from .image.manifest import ImageManifest
from .vm import ChannelSpec, VirtualMachine, VMSpec

log = logging.getLogger(__name__)

PORT_NAME = "org.tmem.check"


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _step(title: str) -> None:
    print(f"== {title}", flush=True)


def _guest_pagecheck(
    args: argparse.Namespace, image: ImageManifest, vm_socket: Path, run_dir: Path
) -> dict[str, Any]:
    """Boot the VM with its port connected to its own socket of the daemon (``vm_socket``,
    from admitting it) and run pagecheck in it, under the admitted name."""
    spec = VMSpec(
        name=args.vm_name,
        memory_mib=args.memory,
        channels=(ChannelSpec(PORT_NAME, vm_socket, "connect"),),
    )
    state_dir = Path(args.state_dir) if args.state_dir else None
    with VirtualMachine(spec, image, backend=args.backend, state_dir=state_dir) as vm:
        try:
            kernel = vm.run("uname -r", check=True).stdout.strip()
            print(f"   {vm.name} is up; guest kernel {kernel}")
            _step(f"pagecheck in the guest ({args.pages} pages over virtio-serial)")
            command = f"tmem-agent pagecheck --port {PORT_NAME} --pages {args.pages} --vm {vm.name}"
            result = vm.run(command, timeout=args.guest_timeout)
        finally:
            (run_dir / "console.log").write_text(vm.console_tail(400) + "\n")
    if result.stderr.strip():
        print(result.stderr.strip())
    try:
        figures = json.loads(result.stdout)
    except ValueError:
        figures = {"output": result.stdout[-2000:]}
    pagecheck = {"exit_code": result.exit_code, **figures}
    _write(run_dir / "pagecheck.json", pagecheck)
    return pagecheck


def run_demo(args: argparse.Namespace) -> int:
    run_dir = Path(args.results) / time.strftime("demo-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    options = {k: v for k, v in vars(args).items() if k != "func"}
    _write(run_dir / "config.json", options)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": {}}

    _step(f"store benchmark ({args.bench_pages} pages)")
    bench = run_bench(args.bench_pages, repeat=args.bench_repeat)
    _write(run_dir / "bench.json", bench)
    summary["steps"]["bench"] = {
        "targets_met": all(t["ok"] for t in bench["targets"].values()),
        "targets": {k: t["ratio"] for k, t in bench["targets"].items()},
    }
    for name, target in bench["targets"].items():
        print(f"   {name:34} {target['ratio']:7.3f}  ({target['target']})"
              f"{'' if target['ok'] else '  MISSED'}")

    _step("guest image")
    image = build_image(progress=lambda line: print(f"   {line}", flush=True))
    print(f"   {image.directory} (kernel {image.kernel_version})")

    _step("tmemd and a VM with a virtio-serial port to it")
    with running_daemon() as daemon:
        try:
            vm_socket = daemon.admit(args.vm_name)
            print(f"   {args.vm_name} admitted: its port connects to {vm_socket}")
            pagecheck = _guest_pagecheck(args, image, vm_socket, run_dir)
            _write(run_dir / "daemon-stats.json", ControlClient(daemon.control).call("stats"))
        finally:
            (run_dir / "tmemd.log").write_text(daemon.log_text())

    passed = pagecheck.get("exit_code") == 0 and "stored" in pagecheck
    summary["steps"]["pagecheck"] = {"passed": passed, **pagecheck}
    summary["passed"] = passed
    _write(run_dir / "summary.json", summary)
    if "stored" in pagecheck:
        print(
            f"   {pagecheck['stored']}/{pagecheck['pages']} pages stored, lost "
            f"{pagecheck['lost']}, wrong {pagecheck['wrong']}; compressed "
            f"{pagecheck['compression_ratio']}:1 in the daemon; put {pagecheck['put_mib_s']} "
            f"MiB/s, get {pagecheck['get_mib_s']} MiB/s over virtio-serial"
        )
    print(f"== {'PASS' if passed else 'FAIL'}: results in {run_dir}")
    return 0 if passed else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: store benchmark and a real guest through tmemd",
                       description="The store benchmark, then a real guest paging through "
                                   "tmemd; results in a fresh run directory.")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="parent directory of the run directory")
    p.add_argument("--bench-pages", type=int, default=20000, metavar="N",
                   help="benchmark corpus size")
    p.add_argument("--bench-repeat", type=int, default=5, metavar="N", help="benchmark rounds")
    p.add_argument("--pages", type=int, default=8192, metavar="N",
                   help="guest pages to round-trip")
    p.add_argument("--memory", type=mib_arg, default="512M", metavar="SIZE",
                   help="guest memory: a size like 512M or 1G; a plain number is MiB")
    p.add_argument("--backend", default="qemu", choices=("qemu", "libvirt", "auto"),
                   help="how the VM is run")
    p.add_argument("--vm-name", default="tmem-demo", metavar="NAME", help="the VM's name")
    p.add_argument("--state-dir", metavar="DIR",
                   help="VM state directory (default: the harness default)")
    p.add_argument("--guest-timeout", type=float, default=900.0, metavar="S",
                   help="seconds for pagecheck")
    p.set_defaults(func=run_demo)
