"""Page compressors behind one small interface.

lzo1x-1 (headerless, as zcache used it) is the default; lz4 and zstd are selectable per
daemon and per pool. Each codec turns a 4 KiB page into bytes and back; decompression is told
the page size so no header is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import PAGE_SIZE
from .errors import ConfigError


@dataclass(frozen=True)
class Codec:
    """A named pair of functions: ``compress(page) -> bytes`` and ``decompress(bytes) -> page``."""

    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def _lzo() -> Codec:
    import lzo

    def compress(page: bytes) -> bytes:
        return lzo.compress(page, 1, False)

    def decompress(data: bytes) -> bytes:
        return lzo.decompress(data, False, PAGE_SIZE)

    return Codec("lzo", compress, decompress)


def _lz4() -> Codec:
    import lz4.block

    def compress(page: bytes) -> bytes:
        return lz4.block.compress(page, store_size=False)

    def decompress(data: bytes) -> bytes:
        return lz4.block.decompress(data, uncompressed_size=PAGE_SIZE)

    return Codec("lz4", compress, decompress)


def _zstd() -> Codec:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=1, write_content_size=False, write_checksum=False)
    dctx = zstandard.ZstdDecompressor()

    def compress(page: bytes) -> bytes:
        return cctx.compress(page)

    def decompress(data: bytes) -> bytes:
        return dctx.decompress(data, max_output_size=PAGE_SIZE)

    return Codec("zstd", compress, decompress)


_FACTORIES: dict[str, Callable[[], Codec]] = {"lzo": _lzo, "lz4": _lz4, "zstd": _zstd}
_CACHE: dict[str, Codec] = {}

CODEC_NAMES: tuple[str, ...] = tuple(_FACTORIES)
DEFAULT_CODEC = "lzo"


def get_codec(name: str) -> Codec:
    """Return the codec called ``name``; ConfigError for an unknown or unavailable one."""
    codec = _CACHE.get(name)
    if codec is not None:
        return codec
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(f"unknown compressor {name!r}; choose one of {', '.join(CODEC_NAMES)}")
    try:
        codec = factory()
    except ImportError as exc:
        raise ConfigError(f"compressor {name!r} is not installed: {exc}") from exc
    _CACHE[name] = codec
    return codec
