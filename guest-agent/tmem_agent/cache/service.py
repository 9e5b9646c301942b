"""``tmem-agent cache``: a data disk served as /dev/nbdN through a tmem ephemeral pool, in a
process of its own (docs/block-cache.md).

The process has its own stream to tmemd, so it suits a guest where no swap agent holds the
port (tmemd lets one connection drive a VM; a second one supersedes the first). Where the
guest also swaps through tmem, ``tmem-agent run --cache-disk`` serves the same cache inside
the swap agent, on its stream. Files in the run directory, per cache name: ``cache-NAME.nbd``
(the NBD socket), ``cache-NAME.sock`` (status, read by ``tmem-agent status``),
``cache-NAME.lock``, ``cache-NAME.state`` (the attached device), ``cache-NAME.pools`` (the
pool an earlier agent of this boot made, destroyed at connect) and ``cache-NAME.ready``.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from .. import service
from ..serving import announce_failure, announce_ready, serve
from ..status import RUN_DIR
from ..swap import hardening
from ..swap.attach import DeviceAttacher
from ..swap.loop import BlockServer
from ..swap.tmemlink import TmemLink
from .device import CacheDevice
from .embedded import add_device_arguments
from .stats import CacheStats

log = logging.getLogger(__name__)

READY_MARKER = "TMEM-CACHE-READY"


def cache_path(run_dir: str, name: str, suffix: str) -> str:
    """A cache's file in the run directory (``suffix``: nbd, sock, lock, state, pools,
    ready)."""
    return os.path.join(run_dir, f"cache-{name}.{suffix}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tmem-agent cache``."""
    parser.add_argument("--disk", required=True, help="the disk to cache (e.g. /dev/vdb)")
    parser.add_argument("--device", default="/dev/nbd1", help="nbd device to attach")
    parser.add_argument("--name", default="cache",
                        help="NBD export name, also naming the cache's files")
    parser.add_argument("--port-name", default="org.tmem.0", help="virtio-serial port to tmemd")
    parser.add_argument("--tmem-socket", metavar="PATH",
                        help="reach tmemd over this unix socket instead of the port (tests)")
    parser.add_argument("--attach", choices=("nbd-client", "netlink", "none"),
                        default="nbd-client",
                        help="how the device is attached; none: serve the NBD socket only")
    parser.add_argument("--run-dir", default=RUN_DIR, metavar="DIR",
                        help="sockets, state and the ready file")
    parser.add_argument("--vm", default=None,
                        help="VM name in the hello; default: tmem.vm= on the kernel command "
                             "line, else the host name")
    parser.add_argument("--batch", type=int, default=256, help="pages per tmem batch frame")
    add_device_arguments(parser)
    parser.add_argument("--io-timeout", type=int, default=30,
                        help="seconds before the kernel resends a request on a new connection")
    parser.add_argument("--dead-conn-timeout", type=int, default=300,
                        help="seconds the kernel holds I/O while no agent is connected")
    parser.add_argument("--no-harden", action="store_true",
                        help="skip SCHED_FIFO, mlockall and the other protections (tests)")


class CacheAgent:
    """One run of ``tmem-agent cache``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.boot_id = service.read_boot_id()
        os.makedirs(args.run_dir, mode=0o700, exist_ok=True)
        name = args.name
        self._lock = service.Agent._take_lock(cache_path(args.run_dir, name, "lock"))
        self.ready_path = cache_path(args.run_dir, name, "ready")
        stats = CacheStats()  # one set of counters: the link's and the cache's
        self.link = TmemLink(lambda: service.open_transport(args.port_name, args.tmem_socket),
                             args.vm or service.default_vm_name(), self.boot_id, None, stats)
        self.device = CacheDevice(self.link, args.disk, name=name, slots=args.slots,
                                  batch=args.batch, direct=not args.no_direct,
                                  threads=args.threads,
                                  state_path=cache_path(args.run_dir, name, "pools"),
                                  write_allocate=not args.no_write_allocate, stats=stats)
        self.server = BlockServer([self.device],
                                  nbd_path=cache_path(args.run_dir, name, "nbd"),
                                  status_path=cache_path(args.run_dir, name, "sock"),
                                  status=self.status)
        self.attacher = DeviceAttacher(self.server, self.device.export, args.device,
                                       cache_path(args.run_dir, name, "nbd"),
                                       cache_path(args.run_dir, name, "state"), self.boot_id,
                                       mode=args.attach, io_timeout=args.io_timeout,
                                       dead_conn_timeout=args.dead_conn_timeout)
        self.attacher.on_ready = self._set_ready
        self.attacher.on_fail = self._fail
        self.server.on_connection_closed = self.attacher.connection_closed
        self.hardening: dict[str, str] = {}
        self.phase = "starting"
        self.ready = False
        self.failed = False

    def status(self) -> dict[str, Any]:
        hello = self.link.hello
        return self.device.status() | {
            "phase": self.phase, "ready": self.ready, "device": self.args.device,
            "attach": self.args.attach, "nbd_connections_open": len(self.server.connections),
            "tmem_in_flight": self.link.in_flight, "hardening": self.hardening,
            "hello": None if hello is None else {
                "status": hello.status.name.lower(), "client_id": hello.client_id,
                "daemon_version": hello.daemon_version},
            "daemon_view": self.link.daemon_view,
            "cpu_user_s": round(os.times()[0], 2), "cpu_system_s": round(os.times()[1], 2),
        }

    def start(self) -> None:
        # The device is the backing of a file system whose writeback may be what frees
        # memory: the same protections as the swap agent's (docs/facts.md).
        if self.args.no_harden:
            self.device.start()
        else:
            self.hardening = hardening.harden()
            self.device.start(hardening.harden_thread)
        if not self.link.connect():
            log.warning("starting without tmemd: the disk is served uncached until it answers")
        self.phase = "attaching"
        self.attacher.start()

    def _set_ready(self) -> None:
        self.phase, self.ready = "ready", True
        info = {"device": self.args.device, "disk": self.args.disk,
                "size": self.device.export.size, "export": self.args.name,
                "tmem": "connected" if self.link.connected else "uncached",
                "attach": self.args.attach}
        announce_ready(self.ready_path, READY_MARKER, info)

    def _fail(self, message: str) -> None:
        self.phase = f"failed: {message}"
        announce_failure("TMEM-CACHE-FAILED", message)
        self.failed = True
        self.server.stop()

    def close(self) -> None:
        try:
            self.device.close()
        finally:
            self.server.close()
            self.link.close()
            os.close(self._lock)
            try:
                os.unlink(self.ready_path)
            except FileNotFoundError:
                pass


def run(args: argparse.Namespace) -> int:
    """Serve the cache until SIGTERM or SIGINT; 1 if attaching the device failed."""
    return serve(CacheAgent(args))
