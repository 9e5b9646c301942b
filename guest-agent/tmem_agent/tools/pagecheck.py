"""Round-trip real guest pages through host tmem and verify every byte (standard library only).

Run inside a guest: ``python3 -m tmem_agent.tools.pagecheck --port org.tmem.check --pages 4096``.
It cuts pages from the guest's own files (so they compress like real memory) plus some zero
pages, stores them in a new persistent pool with pipelined batches over the virtio-serial
port, reads them all back, compares each with what was sent, flushes them, and prints one
JSON object with the counts and the rates. Exit status 0 only if every stored page came back
intact and the pool is empty at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..channel import wire
from ..channel.ports import find_port
from ..channel.transport import GREETED_TIMEOUT_S, Transport, TransportError, greeted
from ..clibase import CommandError, UsageError
from ..service import read_boot_id

PAGE = 4096
SOURCE_DIRS = ("/usr/lib", "/usr/bin", "/usr/share", "/etc")
ZERO_EVERY = 10  # one page in ten is a zero page


def _pages_under(top: str) -> Iterator[bytes]:
    """Whole pages from the first 256 KiB of each file under ``top``, in a fixed order."""
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read(64 * PAGE)
            except OSError:
                continue
            for off in range(0, len(data) - PAGE + 1, PAGE):
                yield data[off : off + PAGE]


def _file_pages() -> Iterator[bytes]:
    """Pages taken in turn from each of SOURCE_DIRS, so binaries, libraries and text mix."""
    sources = [_pages_under(top) for top in SOURCE_DIRS]
    while sources:
        for source in list(sources):
            page = next(source, None)
            if page is None:
                sources.remove(source)
            else:
                yield page


def guest_pages(count: int) -> Iterator[bytes]:
    """``count`` pages from the guest's files, every ZERO_EVERY-th a zero page."""
    files = _file_pages()
    for i in range(count):
        page = bytes(PAGE) if i % ZERO_EVERY == ZERO_EVERY - 1 else next(files, None)
        if page is None:
            raise SystemExit(f"pagecheck: only {i} pages found in {', '.join(SOURCE_DIRS)}")
        yield page


def _pipelined(agent: Transport, op: int, requests: Sequence[bytes], window: int) -> list[bytes]:
    """Submit the requests keeping at most ``window`` in flight; replies in request order."""
    replies: list[bytes] = []
    ids: list[int] = []
    for request in requests:
        ids.append(agent.submit(op, request))
        if len(ids) - len(replies) >= window:
            replies.append(agent.result(ids[len(replies)]))
    while len(replies) < len(ids):
        replies.append(agent.result(ids[len(replies)]))
    return replies


def check_pages(
    agent: Transport, pages: Sequence[bytes], batch: int, window: int, vm: str
) -> dict[str, Any]:
    """Hello (unless ``agent`` has said it), then put, get (verified), and flush every page
    through ``agent``; the figures."""
    keys = [((i // 1024, 0x7E57, 0), i % 1024) for i in range(len(pages))]
    spans = [(i, min(i + batch, len(pages))) for i in range(0, len(pages), batch)]
    reply = agent.hello_reply or agent.hello(vm, read_boot_id(), os.urandom(16),
                                             timeout=GREETED_TIMEOUT_S)
    pool = agent.new_pool(wire.POOL_PERSIST)

    def timed(op: int, with_pages: bool) -> tuple[list[bytes], float]:
        requests = [
            wire.batch_request(pool, keys[a:b], pages[a:b] if with_pages else ())
            for a, b in spans
        ]
        t0 = time.monotonic()
        replies = _pipelined(agent, op, requests, window)
        return replies, time.monotonic() - t0

    put_replies, t_put = timed(wire.Op.PUT_BATCH, True)
    get_replies, t_get = timed(wire.Op.GET_BATCH, False)
    held = agent.stats()["client"]  # the daemon's view while it holds the pages
    _, t_flush = timed(wire.Op.FLUSH_BATCH, False)
    left = agent.get_batch(pool, keys[: min(batch, len(keys))])
    agent.destroy_pool(pool)

    stored = [
        ok
        for (a, b), r in zip(spans, put_replies, strict=True)
        for ok in wire.parse_flags_reply(r, b - a)
    ]
    got = [
        page
        for (a, b), r in zip(spans, get_replies, strict=True)
        for page in wire.parse_get_batch_reply(r, b - a)
    ]
    outcomes = list(zip(stored, got, pages, strict=True))
    mib = len(pages) * PAGE / (1 << 20)
    return {
        "vm": vm,
        "status": reply.status.name.lower(),
        "client_id": reply.client_id,
        "pages": len(pages),
        "stored": sum(stored),
        "refused": len(pages) - sum(stored),
        "lost": sum(1 for ok, g, _ in outcomes if ok and g is None),
        "wrong": sum(1 for ok, g, p in outcomes if ok and g is not None and g != p),
        "phantom": sum(1 for ok, g, _ in outcomes if not ok and g is not None),
        "left_after_flush": sum(1 for g in left if g is not None),
        "daemon_pages": held["pages"],
        "daemon_compressed_bytes": held["zbytes"],
        "compression_ratio": round(held["pages"] * PAGE / max(1, held["zbytes"]), 2),
        "batch": batch,
        "window": window,
        "put_pps": round(len(pages) / t_put, 1),
        "get_pps": round(len(pages) / t_get, 1),
        "flush_pps": round(len(pages) / t_flush, 1),
        "put_mib_s": round(mib / t_put, 2),
        "get_mib_s": round(mib / t_get, 2),
    }


def passed(result: dict[str, Any]) -> bool:
    """Every stored page came back intact, nothing refused came back, the flush emptied it."""
    bad = result["lost"] or result["wrong"] or result["phantom"] or result["left_after_flush"]
    return not bad and result["stored"] > 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", default="org.tmem.check", help="virtio-serial port name")
    parser.add_argument("--pages", type=int, default=4096, help="guest pages to round-trip")
    parser.add_argument("--batch", type=int, default=64, help="pages per frame")
    parser.add_argument("--window", type=int, default=4, help="batches in flight")
    parser.add_argument("--vm", default=os.uname().nodename, help="VM identity sent in hello")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every page passed, 1 when one did not (the JSON on stdout says which)."""
    if not 0 < args.batch <= wire.MAX_BATCH or args.pages <= 0 or args.window <= 0:
        raise UsageError(f"pages, batch and window must be positive, "
                         f"batch <= {wire.MAX_BATCH}")
    pages = list(guest_pages(args.pages))
    device = find_port(args.port)
    if device is None:
        raise CommandError(f"no virtio-serial port named {args.port!r}")
    try:  # the port may be between two connections of its host side: greeted waits
        agent = greeted(lambda: Transport.device(device), args.vm, read_boot_id(),
                        os.urandom(16))
    except TransportError as exc:
        raise CommandError(f"tmemd: {exc}") from None
    with agent:
        result = check_pages(agent, pages, args.batch, args.window, args.vm)
    print(json.dumps(result))
    return 0 if passed(result) else 1


