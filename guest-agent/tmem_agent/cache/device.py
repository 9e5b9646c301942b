"""One cached disk put together: the disk and its worker threads, page slots, the ephemeral
pool, the guard and the handler, as a part of the agent's loop
(:class:`tmem_agent.swap.loop.Part`).

A device shares the link it is given: in ``tmem-agent cache`` a link of its own; in
``tmem-agent run --cache-disk`` the swap agent's, so that one guest keeps one stream and one
tmem client (tmemd lets one connection drive a VM: a second one would supersede the first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..channel import wire
from ..ioworker import IoWorker
from ..swap.nbdconn import PAGE_SIZE, Handler, PagePool
from ..swap.nbdproto import FLAG_SEND_FUA, Export
from ..swap.tmemlink import TmemLink
from .diskio import DiskFile
from .guard import StaleGuard
from .handler import CacheHandler
from .pool import EphemeralPool
from .stats import CacheStats

log = logging.getLogger(__name__)


class CacheDevice:
    """A data disk served through a tmem ephemeral pool."""

    def __init__(self, link: TmemLink, disk_path: str, *, name: str = "cache",
                 slots: int = 512, batch: int = wire.MAX_BATCH, direct: bool = True,
                 threads: int = 4, state_path: str | None = None,
                 write_allocate: bool = True, stats: CacheStats | None = None) -> None:
        self.link = link
        self.name = name
        self.stats = stats if stats is not None else CacheStats()
        self.disk = DiskFile(disk_path, direct)
        self.worker = IoWorker("cache-io", threads)
        self.pool = PagePool(slots)
        self.keeper = EphemeralPool(link, self.stats, name, state_path)
        link.add_keeper(self.keeper)
        self.guard = StaleGuard()
        self.cache = CacheHandler(link, self.keeper, self.disk, self.worker, self.pool,
                                  self.stats, self.guard, batch_max=batch,
                                  write_allocate=write_allocate)
        self.handler: Handler = self.cache
        flags = Export("", 0).flags | FLAG_SEND_FUA
        self.export = Export(name, self.disk.size, flags=flags,
                             max_request=min(batch, slots) * PAGE_SIZE)
        log.info("cache %s: %s, %d MiB, %s", name, disk_path, self.disk.size >> 20,
                 "O_DIRECT" if self.disk.direct else "buffered with fadvise DONTNEED")

    def start(self, setup: Callable[[], dict[str, str]] | None = None) -> None:
        """Start the disk threads (``setup``: the agent's per-thread hardening)."""
        self.worker.start(setup)

    # ----- the loop's Part interface ---------------------------------------------------------
    def readers(self) -> list[tuple[int, Callable[[], None]]]:
        return [(self.worker.fileno(), self.worker.complete)]

    def after_events(self) -> None:
        self.cache.puts.send()

    def tick(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def connection_added(self) -> None:
        self.stats.add("nbd_connections")

    # ----- status and shutdown ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.stats.snapshot({
            "disk": self.disk.path, "size": self.disk.size, "o_direct": self.disk.direct,
            "export": self.name, "pool_id": self.keeper.pool_id,
            "pool_incarnation": self.keeper.incarnation, "keeps_on_get": self.keeper.keeps_on_get,
            "tmem_connected": self.link.connected, "slots": self.pool.count,
            "slots_free": self.pool.available, "disk_jobs": self.worker.pending,
            "disk_thread_hardening": self.worker.thread_setup,
        })

    def close(self) -> None:
        """Finish the disk jobs, give the pool back, close the disk."""
        try:
            self.worker.drain()
            self.cache.puts.send()
        finally:
            self.worker.close()
            self.keeper.close()
            self.disk.close()
