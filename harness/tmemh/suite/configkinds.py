"""Every memory configuration a suite can name: the kernel's (:mod:`.configs`) and the tmem
ones (:mod:`.tmemconfigs`), built in by name or made from a ``[configuration.NAME]`` table."""

from __future__ import annotations

from typing import Any

from .configs import DiskSwap, MemoryConfiguration, NoSwap, Zram, Zswap
from .errors import SuiteError
from .tmemconfigs import Tmem, TmemSwap

KINDS: dict[str, type[MemoryConfiguration]] = {
    cls.kind: cls for cls in (NoSwap, DiskSwap, Zswap, Zram, TmemSwap, Tmem)}
BUILTIN: dict[str, dict[str, Any]] = {
    "none": {"kind": "none"},
    "disk-swap": {"kind": "disk-swap"},
    "zswap": {"kind": "zswap"},
    "zswap-zbud": {"kind": "zswap", "zpool": "zbud"},
    "zswap-zsmalloc": {"kind": "zswap", "zpool": "zsmalloc"},
    "zram": {"kind": "zram"},
    "tmem-swap": {"kind": "tmem-swap"},
    "tmem": {"kind": "tmem"},
}


def make_configuration(name: str, table: dict[str, Any] | None = None) -> MemoryConfiguration:
    """The configuration ``name``: built in, or defined by a ``[configuration.NAME]`` table
    (``kind`` and parameters), which may also override a built-in one's parameters."""
    merged = {**BUILTIN.get(name, {}), **(table or {})}
    kind = merged.pop("kind", None)
    if kind is None:
        raise SuiteError(f"configuration {name}: unknown (built in: {', '.join(BUILTIN)}); "
                         "define it with a [configuration.NAME] table and a kind")
    if kind not in KINDS:
        raise SuiteError(f"configuration {name}: unknown kind {kind!r} "
                         f"(use one of {list(KINDS)})")
    return KINDS[kind](name, merged)
