"""A dictionary in place of tmem, for the userfaultfd region tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tmem_agent.uffd.store import StoreError


class DictStore:
    """tmem as a dictionary: persistent gets keep the page, ephemeral gets take it; pages
    can be dropped (as tmem reclaims them) or refused, and every call is recorded."""

    def __init__(self, persistent: bool = True) -> None:
        self.persistent = persistent
        self.pages: dict[int, bytes] = {}
        self.puts: list[int] = []
        self.gets: list[int] = []
        self.flushed: list[int] = []
        self.refuse: Callable[[int, bytes], bool] = lambda page, data: False
        self.reclaim: Callable[[int], bool] = lambda page: False  # stored, then dropped
        self.fail_puts = False
        self.fail_gets: Exception | None = None
        self.latency = 0.0  # seconds a put or get takes, the GIL let go (as a socket does)
        self.closed = False

    def put(self, pages: Sequence[int], data: Sequence[bytes]) -> list[bool]:
        if self.fail_puts:
            raise StoreError("the link is down")
        time.sleep(self.latency)
        self.puts += pages
        results = []
        for page, content in zip(pages, data, strict=True):
            ok = not self.refuse(page, content)
            if ok and not self.reclaim(page):
                self.pages[page] = content
            else:
                self.pages.pop(page, None)
            results.append(ok)
        return results

    def get(self, pages: Sequence[int]) -> list[bytes | None]:
        if self.fail_gets is not None:
            raise self.fail_gets
        time.sleep(self.latency)
        self.gets += pages
        if self.persistent:
            return [self.pages.get(p) for p in pages]
        return [self.pages.pop(p, None) for p in pages]

    def flush(self, pages: Sequence[int]) -> None:
        self.flushed += pages
        for page in pages:
            self.pages.pop(page, None)

    def close(self) -> None:
        self.closed = True
