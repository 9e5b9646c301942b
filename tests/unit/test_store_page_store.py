"""StoreConfig.page_store: which page store holds a pool's pages (auto: by persistence, as
tmemd serves; or one store for every pool, for tmemd replay)."""

from __future__ import annotations

import pytest

from tmemd.store.errors import ConfigError
from tmemd.store.pools import PoolFlags
from tmemd.store.tmem import StoreConfig, TmemStore

PAGE = 4096


def pages(n: int) -> list[bytes]:
    return [(f"{i:08d} some text that compresses. ".encode() * 200)[:PAGE] for i in range(n)]


def fill(store: TmemStore, flags: int) -> tuple[int, int]:
    client = store.new_client("c")
    pool = store.new_pool(client, flags)
    data = pages(40)
    for i, page in enumerate(data):
        assert store.put(client, pool, (1, 0, 0), i, page)
    assert all(store.get(client, pool, (1, 0, 0), i) == page for i, page in enumerate(data)
               if flags & PoolFlags.PERSIST)
    return store.zbud.frames_in_use, store.xv.frames_in_use


@pytest.mark.parametrize("page_store, flags, where", [
    ("auto", PoolFlags.PERSIST, "xv"), ("auto", 0, "zbud"),
    ("zbud", PoolFlags.PERSIST, "zbud"), ("zbud", 0, "zbud"),
    ("xvmalloc", PoolFlags.PERSIST, "xv"), ("xvmalloc", 0, "xv"),
])
def test_the_page_store_holds_every_pool_it_is_given(page_store: str, flags: int,
                                                     where: str) -> None:
    store = TmemStore(StoreConfig(memory_limit_bytes=8 << 20, page_store=page_store))
    zbud, xv = fill(store, flags)
    assert (zbud > 0, xv > 0) == (where == "zbud", where == "xv")


def test_a_forced_store_keeps_the_pools_semantics() -> None:
    store = TmemStore(StoreConfig(memory_limit_bytes=8 << 20, page_store="xvmalloc"))
    client = store.new_client("c")
    pool = store.new_pool(client, 0)  # ephemeral: gets stay exclusive, in xvmalloc too
    page = pages(1)[0]
    assert store.put(client, pool, (1, 0, 0), 0, page)
    assert store.get(client, pool, (1, 0, 0), 0) == page
    assert store.get(client, pool, (1, 0, 0), 0) is None
    assert store.xv.frames_in_use == 0


def test_dedup_stays_off_for_pools_in_xvmalloc() -> None:
    store = TmemStore(StoreConfig(memory_limit_bytes=8 << 20, page_store="xvmalloc",
                                  dedup=True))
    client = store.new_client("c")
    pool = store.new_pool(client, 0)
    page = pages(1)[0]
    assert store.put(client, pool, (1, 0, 0), 0, page)
    assert store.put(client, pool, (1, 0, 0), 1, page)
    assert store.flush_page(client, pool, (1, 0, 0), 0)
    assert store.get(client, pool, (1, 0, 0), 1) == page


def test_an_unknown_page_store_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="page_store"):
        TmemStore(StoreConfig(page_store="zsmalloc"))
