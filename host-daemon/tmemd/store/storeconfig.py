"""The settings of one tmem store (the daemon's configuration builds one of these)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import PAGE_SIZE
from .codecs import DEFAULT_CODEC, get_codec
from .errors import ConfigError
from .xvmalloc import XvmallocStore

MAX_CLIENTS_LIMIT = 1 << 20
PAGE_STORES = ("auto", "zbud", "xvmalloc")  # the highest max_clients a configuration may ask for


@dataclass
class StoreConfig:
    """Settings of one store. Sizes are bytes."""

    memory_limit_bytes: int = 256 << 20
    persistent_cap_bytes: int | None = None  # None: 3/4 of the memory limit, as zcache did
    codec: str = DEFAULT_CODEC
    max_persistent_zsize: int = PAGE_SIZE * 7 // 8
    max_ephemeral_zsize: int | None = None  # None: the largest zbud buddy
    # Clients (guests) at once; each may hold MAX_POOLS pools. Entries and objects need no
    # bound of their own: each is charged against the memory limit (see charging.py).
    max_clients: int = 1024
    # Identical ephemeral pages of one client stored once (dedup.py, docs/dedup.md).
    dedup: bool = False
    # Which page store holds a pool's pages: "auto" (xvmalloc for persistent pools, zbud for
    # ephemeral ones, as tmemd serves) or one of them for every pool (tmemd replay's
    # comparison of store designs; zbud frames may then be reclaimed under persistent pages).
    page_store: str = "auto"

    def validate(self) -> None:
        if self.memory_limit_bytes < PAGE_SIZE:
            raise ConfigError(f"memory limit {self.memory_limit_bytes} is below one page")
        if self.persistent_cap_bytes is not None and self.persistent_cap_bytes < 0:
            raise ConfigError("persistent cap must not be negative")
        if not 0 < self.max_persistent_zsize <= XvmallocStore.max_size:
            raise ConfigError(f"max_persistent_zsize must be in 1..{XvmallocStore.max_size}")
        if self.max_ephemeral_zsize is not None and not 0 < self.max_ephemeral_zsize <= PAGE_SIZE:
            raise ConfigError(f"max_ephemeral_zsize must be in 1..{PAGE_SIZE}")
        if not 0 < self.max_clients <= MAX_CLIENTS_LIMIT:
            raise ConfigError(f"max_clients must be in 1..{MAX_CLIENTS_LIMIT}")
        get_codec(self.codec)
        if self.page_store not in PAGE_STORES:
            raise ConfigError(f"page_store must be one of {', '.join(PAGE_STORES)}")
