"""The trace options of ``tmem-agent run`` (``--trace FILE [--trace-pages] [--trace-max SIZE]
[--trace-estimate-every N]``, defaults from ``tmem.trace=PATH``, ``tmem.trace_pages=1`` and
``tmem.trace_estimate=N`` on the kernel command line) and the recorder they make."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable

from .. import __version__
from ..units import page_size_arg
from .fileformat import ESTIMATE_EVERY
from .recorder import TraceRecorder, Worker

log = logging.getLogger(__name__)

CMDLINE_TRACE = "tmem.trace"
CMDLINE_PAGES = "tmem.trace_pages"
CMDLINE_ESTIMATE = "tmem.trace_estimate"
DEFAULT_MAX = "1G"


def add_arguments(parser: argparse.ArgumentParser,
                  kernel_word: Callable[[str], str | None]) -> None:
    """The trace options; ``kernel_word(key)`` reads their defaults off the kernel command
    line."""
    parser.add_argument("--trace", default=kernel_word(CMDLINE_TRACE), metavar="FILE",
                        help="record every page operation sent to tmemd, and its outcome, in "
                             f"FILE (docs/trace.md); default: {CMDLINE_TRACE}= on the kernel "
                             "command line, else none")
    parser.add_argument("--trace-pages", action="store_true",
                        default=kernel_word(CMDLINE_PAGES) in ("1", "yes", "on"),
                        help="also record the contents of every page put (4 KiB each); "
                             f"default: {CMDLINE_PAGES}=1 on the kernel command line")
    parser.add_argument("--trace-max", type=page_size_arg, default=DEFAULT_MAX, metavar="SIZE",
                        help="stop recording (and count what is dropped) at this file size")
    parser.add_argument("--trace-estimate-every", type=_every,
                        default=_kernel_every(kernel_word(CMDLINE_ESTIMATE)),
                        metavar="N",
                        help="compress one put in N (chosen by content hash) for the trace's "
                             "zlib-1 size estimate; 1: every put (about 50 us a put more); "
                             f"default: {CMDLINE_ESTIMATE}= on the kernel command line, else "
                             f"{ESTIMATE_EVERY}")


def _every(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return value


def _kernel_every(word: str | None) -> int:
    """The kernel command line's value; a bad one is logged, never fatal."""
    if word is None:
        return ESTIMATE_EVERY
    try:
        return _every(word)
    except argparse.ArgumentTypeError as exc:
        log.warning("%s=%s ignored (%s): %d", CMDLINE_ESTIMATE, word, exc, ESTIMATE_EVERY)
        return ESTIMATE_EVERY


def make_recorder(args: argparse.Namespace, worker: Worker, vm: str,
                  boot_id: bytes) -> TraceRecorder | None:
    """The recorder ``args`` ask for, or None (none asked for, or its file cannot be made:
    logged, the agent runs without it)."""
    if not args.trace:
        return None
    meta = {"vm": vm, "boot_id": boot_id.hex(), "agent_version": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "started_unix": time.time(),
            "started_monotonic_ns": time.monotonic_ns(), "pid": os.getpid()}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.trace)), exist_ok=True)
        recorder = TraceRecorder(args.trace, worker, meta, pages=args.trace_pages,
                                 max_bytes=args.trace_max,
                                 estimate_every=args.trace_estimate_every)
    except OSError as exc:
        log.error("no trace: cannot open %s: %s", args.trace, exc)
        return None
    log.info("recording a trace in %s%s (at most %d bytes)", args.trace,
             " with page contents" if args.trace_pages else "", args.trace_max)
    return recorder
