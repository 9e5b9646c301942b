import os

import pytest

from tmemd import PAGE_SIZE
from tmemd.store.codecs import CODEC_NAMES, get_codec
from tmemd.store.errors import ConfigError


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_round_trip_of_text_zero_and_random_pages(name: str) -> None:
    codec = get_codec(name)
    text = (b"The quick brown fox jumps over the lazy dog. " * 100)[:PAGE_SIZE]
    for page in (text, bytes(PAGE_SIZE), os.urandom(PAGE_SIZE)):
        packed = codec.compress(page)
        assert codec.decompress(packed) == page
    assert len(codec.compress(text)) < PAGE_SIZE // 4


def test_unknown_codec_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown compressor 'brotli'"):
        get_codec("brotli")
