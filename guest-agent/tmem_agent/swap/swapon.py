"""The swap device's attacher: :class:`~.attach.DeviceAttacher` plus the steps that make an
attached /dev/nbd0 the guest's swap.

nbd-client is run with ``-swap`` (it keeps its own pages resident). After a fresh attach:
``mkswap DEVICE``, ``swapon --discard -p PRIORITY DEVICE`` and vm.page-cluster set. Those
commands do I/O on the device, so they run while the event loop serves it. After a restart
(the device still attached by an agent of this boot) the device is ready as it is if swap is
still on it, else it is prepared as after a fresh attach.
"""

from __future__ import annotations

import logging

from . import netlink
from .attach import DeviceAttacher
from .loop import BlockServer
from .nbdproto import Export

log = logging.getLogger(__name__)

PAGE_CLUSTER_PATH = "/proc/sys/vm/page-cluster"


def page_cluster() -> int | None:
    """The kernel's vm.page-cluster now (None if it cannot be read)."""
    try:
        with open(PAGE_CLUSTER_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class SwapAttacher(DeviceAttacher):
    """Keeps the swap device attached, and swap on it (at ``priority``; vm.page-cluster set
    to ``page_cluster_order`` unless it is negative)."""

    owner = "tmem agent"
    nbd_client_options = ("-swap",)

    def __init__(self, server: BlockServer, export: Export, device: str, nbd_path: str,
                 state_path: str, boot_id: bytes, *, priority: int, page_cluster_order: int,
                 mode: str = "nbd-client", io_timeout: int = 30,
                 dead_conn_timeout: int = 300) -> None:
        super().__init__(server, export, device, nbd_path, state_path, boot_id, mode=mode,
                         io_timeout=io_timeout, dead_conn_timeout=dead_conn_timeout)
        self.priority = priority
        self.page_cluster_order = page_cluster_order  # reads of 2^N pages; -1: kernel's

    def _prepare(self) -> None:
        self.on_phase("mkswap")
        self.server.spawn(["mkswap", self.device], self._made_swap)

    def _made_swap(self, code: int, output: str) -> None:
        if code != 0:
            self.on_fail(f"mkswap failed ({code}): {output.strip()}")
            return
        self.on_phase("swapon")
        self.server.spawn(["swapon", "--discard", "-p", str(self.priority), self.device],
                          self._swapped_on)

    def _swapped_on(self, code: int, output: str) -> None:
        if code != 0:
            self.on_fail(f"swapon failed ({code}): {output.strip()}")
            return
        if self.page_cluster_order >= 0:
            try:
                with open(PAGE_CLUSTER_PATH, "w") as f:
                    f.write(str(self.page_cluster_order))
            except OSError as exc:
                log.warning("cannot set %s: %s", PAGE_CLUSTER_PATH, exc)
        self._ready()

    def _reattached(self) -> None:
        if netlink.swap_active(self.device):
            self._ready()
        else:
            self._attached()
