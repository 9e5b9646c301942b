"""Sizes on the agent's command line: ``4096``, ``64K``, ``256M``, ``1G`` (powers of 1024; a
trailing ``B`` or ``iB`` is allowed, case does not matter). Standard library only."""

from __future__ import annotations

import argparse
import re

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def parse_size(text: str) -> int:
    """Bytes in ``text``; ValueError for anything else (fractions, negatives, other units)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 64K, 256M, 1G)")
    return int(match.group(1)) << _SHIFT[match.group(2).lower()]


def page_size_arg(text: str) -> int:
    """An argparse ``type``: a size that is a positive whole number of 4 KiB pages."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0 or size % 4096:
        raise argparse.ArgumentTypeError(f"{text}: not a positive multiple of 4 KiB")
    return size
