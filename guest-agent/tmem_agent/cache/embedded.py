"""The block cache inside ``tmem-agent run`` (``--cache-disk DEV``): the same
:class:`~tmem_agent.cache.device.CacheDevice` as ``tmem-agent cache``, but on the swap agent's
link and loop, so one guest keeps one stream and one tmem client holding both its persistent
(swap) and its ephemeral (cache) pool (docs/block-cache.md).

The device is attached once swap is on (a file system's I/O should not wait behind swap's
set-up). Its files sit beside the swap fallback, on disk, as the swap agent's own state does:
a restarted agent must not read tmpfs pages that may be swapped out to the stalled device.
``cache-NAME.state`` (the attached device), ``cache-NAME.pools`` (the pool to destroy at the
next connect).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

from ..swap import hardening
from ..swap.attach import DeviceAttacher
from ..swap.loop import BlockServer
from ..swap.tmemlink import TmemLink
from .device import CacheDevice

log = logging.getLogger(__name__)

CMDLINE_WORD = "tmem.cache_disk"  # the default of --cache-disk, from the kernel command line
NAME = "cache"  # the NBD export (the swap agent's is "swap")


def add_device_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The options of one cached disk (``prefix``: "cache-" where they sit beside the
    swap agent's)."""
    p = f"--{prefix}"
    parser.add_argument(f"{p}slots", type=int, default=512,
                        help="page buffers allocated at start (bounds the pages in flight)")
    parser.add_argument(f"{p}threads", type=int, default=4, help="disk I/O threads")
    parser.add_argument(f"{p}no-direct", action="store_true",
                        help="buffered disk I/O with fadvise DONTNEED instead of O_DIRECT")
    parser.add_argument(f"{p}no-write-allocate", action="store_true",
                        help="do not put written blocks into the pool (reads only)")


def add_arguments(parser: argparse.ArgumentParser, default_disk: str | None) -> None:
    """The cache options of ``tmem-agent run``."""
    parser.add_argument("--cache-disk", default=default_disk, metavar="DEV",
                        help="also serve this disk (e.g. /dev/vdb) through a tmem ephemeral "
                             "pool, as --cache-device, on the agent's own stream; default: "
                             f"{CMDLINE_WORD}= on the kernel command line, else none")
    parser.add_argument("--cache-device", default="/dev/nbd1", metavar="DEV",
                        help="nbd device the cached disk is attached as")
    add_device_arguments(parser, prefix="cache-")


class EmbeddedCache:
    """The cache part of a swap agent: its device, served on the agent's ``link`` and, from
    :meth:`serve_on`, by its server (a standby builds the device before it may bind the
    server's sockets)."""

    attacher: DeviceAttacher  # made by serve_on

    def __init__(self, args: argparse.Namespace, link: TmemLink, state_dir: str) -> None:
        self.args = args
        self.device_path = args.cache_device
        self.state_dir = state_dir
        self.device = CacheDevice(link, args.cache_disk, name=NAME, slots=args.cache_slots,
                                  batch=args.batch, direct=not args.cache_no_direct,
                                  threads=args.cache_threads,
                                  state_path=os.path.join(state_dir, f"cache-{NAME}.pools"),
                                  write_allocate=not args.cache_no_write_allocate)
        self.phase = "waiting for swap"
        self.started = False

    def serve_on(self, server: BlockServer, nbd_path: str, boot_id: bytes) -> None:
        """Join ``server`` (listening on ``nbd_path``) as its second export."""
        args = self.args
        server.add_part(self.device)
        self.attacher = DeviceAttacher(server, self.device.export, args.cache_device, nbd_path,
                                       os.path.join(self.state_dir, f"cache-{NAME}.state"),
                                       boot_id, mode=args.attach, io_timeout=args.io_timeout,
                                       dead_conn_timeout=args.dead_conn_timeout)

    def start_threads(self, harden: bool) -> None:
        self.device.start(hardening.harden_thread if harden else None)

    def attach(self, done: Callable[[], None]) -> None:
        """Attach the device; ``done()`` afterwards, whether it worked or not (the swap
        device is served either way; :attr:`phase` says which)."""
        self.started = True
        self.phase = "attaching"

        def ready() -> None:
            self.phase = "ready"
            done()

        def failed(message: str) -> None:
            self.phase = f"failed: {message}"
            log.error("cache on %s: %s", self.device_path, message)
            print(f"TMEM-CACHE-FAILED {message}", flush=True)
            done()

        self.attacher.on_ready, self.attacher.on_fail = ready, failed
        self.attacher.start()

    def ready_info(self) -> dict[str, Any]:
        return {"cache": self.phase, "cache_device": self.device_path,
                "cache_disk": self.device.disk.path}

    def status(self) -> dict[str, Any]:
        """Under the agent's ``"cache"``, by name (as ``tmem-agent status`` shows caches)."""
        return {NAME: self.device.status() | {"phase": self.phase, "device": self.device_path,
                                              "ready": self.phase == "ready"}}

    def close(self) -> None:
        self.device.close()
