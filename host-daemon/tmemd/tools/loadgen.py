"""``tmemd loadgen``: N simulated guests against a running ``tmemd serve``.

Each client is a separate process speaking the wire protocol over the real socket, through
the same transport a guest agent uses. It says hello, creates a persistent pool, then runs
three phases in step with the other clients (a barrier before each): put every corpus page,
get back every accepted page (verifying each byte for byte, and that refused pages miss),
flush every page. Requests are batches of ``--batch`` pages with ``--pipeline`` of them in
flight. With ``--pipeline 1`` every round trip is timed into a latency histogram.

Rates are pages per second, per client and aggregate (all pages over the span from the first
client's start to the last client's end). With ``--repeat`` each client count runs several
rounds and the fastest is reported (a socket benchmark against one daemon; ``tmemd bench``,
in process, reports medians of interleaved rounds instead). ``--baseline`` names a
``tmemd bench`` JSON file from the same machine: the report then compares the socket rates
with the in-process store.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tmem_agent.channel import wire
from tmem_agent.channel.transport import Transport

from ..clikit import CommandError, UsageError, finish_report, target
from ..service.server import keep_freed_memory
from ..store.latency import LatencyHistogram
from .corpus import CORPUS_NAMES, DEFAULT_CORPUS, corpus_handles, describe_corpus, make_corpus

log = logging.getLogger(__name__)

SCHEMA = "tmemd-loadgen/1"
PHASES = ("put", "get", "flush")
BARRIER_TIMEOUT = 300.0
# Targets of the issue: one pipelined client against the in-process store, and N clients
# against one; each client of a run within this fraction of the run's mean rate.
TARGET_SINGLE_VS_INPROCESS = 0.6
TARGET_MANY_VS_SINGLE = 0.9
TARGET_FAIRNESS = 0.25


class LoadgenError(RuntimeError):
    """A client failed, lost a page or read back wrong data."""


@dataclass(frozen=True)
class LoadSpec:
    socket: str
    batch: int
    pipeline: int
    timeout: float = 60.0


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Pipeline:
    """Keeps up to ``depth`` requests in flight; calls each one's handler with its reply."""

    def __init__(self, transport: Transport, depth: int, timeout: float) -> None:
        self.transport = transport
        self.depth = depth
        self.timeout = timeout
        self.latency = LatencyHistogram() if depth == 1 else None
        self._window: deque[tuple[int, int, Callable[[bytes], None]]] = deque()

    def send(self, op: int, payload: bytes, handler: Callable[[bytes], None]) -> None:
        if len(self._window) >= self.depth:
            self._complete_oldest()
        self._window.append((self.transport.submit(op, payload), time.perf_counter_ns(), handler))

    def drain(self) -> None:
        while self._window:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        rid, started, handler = self._window.popleft()
        reply = self.transport.result(rid, self.timeout)
        if self.latency is not None:
            self.latency.record(time.perf_counter_ns() - started)
        handler(reply)


class _Client:
    """One simulated guest: the three phases over one connection."""

    def __init__(self, index: int, spec: LoadSpec, pages: list[bytes]) -> None:
        self.index = index
        self.spec = spec
        self.pages = pages
        self.handles = corpus_handles(len(pages))
        self.vm = f"loadgen-{os.getpid()}-{index}"
        self.transport = Transport.unix(spec.socket)
        self.pool = -1
        self.accepted: list[int] = []
        self.phases: dict[str, dict[str, float]] = {}
        self.latency: dict[str, Any] = {}

    def connect(self) -> None:
        self.transport.open()
        self.transport.hello(self.vm, os.urandom(16), os.urandom(16))
        self.pool = self.transport.new_pool(1)  # persistent: puts that fit must stay

    def run_phase(self, name: str) -> None:
        pipe = _Pipeline(self.transport, self.spec.pipeline, self.spec.timeout)
        start = time.monotonic()
        count = getattr(self, f"_{name}")(pipe)
        pipe.drain()
        end = time.monotonic()
        self.phases[name] = {"pages": count, "start": start, "end": end,
                             "seconds": end - start, "pps": count / (end - start)}
        if pipe.latency is not None:
            self.latency[name] = pipe.latency.to_dict()

    def _put(self, pipe: _Pipeline) -> int:
        for chunk in _chunks(list(range(len(self.pages))), self.spec.batch):
            payload = wire.batch_request(self.pool, [self.handles[i] for i in chunk],
                                         [self.pages[i] for i in chunk])

            def stored(reply: bytes, chunk: list[int] = chunk) -> None:
                flags = wire.parse_flags_reply(reply, len(chunk))
                self.accepted.extend(i for i, ok in zip(chunk, flags, strict=True) if ok)

            pipe.send(wire.Op.PUT_BATCH, payload, stored)
        return len(self.pages)

    def _get(self, pipe: _Pipeline) -> int:
        for chunk in _chunks(self.accepted, self.spec.batch):
            payload = wire.batch_request(self.pool, [self.handles[i] for i in chunk])

            def verify(reply: bytes, chunk: list[int] = chunk) -> None:
                got = wire.parse_get_batch_reply(reply, len(chunk))
                for i, page in zip(chunk, got, strict=True):
                    if page != self.pages[i]:
                        state = "missing" if page is None else "different"
                        raise LoadgenError(f"{self.vm}: page {i} came back {state}")

            pipe.send(wire.Op.GET_BATCH, payload, verify)
        return len(self.accepted)

    def _flush(self, pipe: _Pipeline) -> int:
        found = [0]
        for chunk in _chunks(list(range(len(self.pages))), self.spec.batch):
            payload = wire.batch_request(self.pool, [self.handles[i] for i in chunk])

            def count(reply: bytes, n: int = len(chunk)) -> None:
                found[0] += sum(wire.parse_flags_reply(reply, n))

            pipe.send(wire.Op.FLUSH_BATCH, payload, count)
        pipe.drain()
        if found[0] != len(self.accepted):
            raise LoadgenError(f"{self.vm}: flush found {found[0]} pages, "
                               f"{len(self.accepted)} were stored")
        return len(self.pages)

    def check_refused_pages_miss(self) -> None:
        """Pages the daemon refused must not be readable (checked after the timed get phase)."""
        taken = set(self.accepted)
        refused = [i for i in range(len(self.pages)) if i not in taken]
        for chunk in _chunks(refused, self.spec.batch):
            got = self.transport.get_batch(self.pool, [self.handles[i] for i in chunk])
            if any(page is not None for page in got):
                raise LoadgenError(f"{self.vm}: a refused page was readable")

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"client": self.index, "vm": self.vm,
                               "accepted_pages": len(self.accepted), **self.phases}
        if self.latency:
            out["latency"] = self.latency
        return out


def _client_process(index: int, spec: LoadSpec, pages: list[bytes],
                    barrier: Any, report: Connection) -> None:
    """Body of one client process; sends the parent a result dict or an error string."""
    client: _Client | None = None
    try:
        client = _Client(index, spec, pages)
        client.connect()
        for phase in PHASES:
            barrier.wait(BARRIER_TIMEOUT)
            client.run_phase(phase)
            if phase == "get":
                client.check_refused_pages_miss()
        client.transport.destroy_pool(client.pool)
        report.send(client.result())
    except BaseException as exc:  # report every failure to the parent, then exit
        barrier.abort()
        report.send(f"client {index}: {type(exc).__name__}: {exc}")
    finally:
        report.close()
        if client is not None:
            client.transport.close()


def _summarise(per_client: list[dict[str, Any]]) -> dict[str, Any]:
    aggregate: dict[str, Any] = {}
    fairness: dict[str, Any] = {}
    for phase in PHASES:
        runs = [c[phase] for c in per_client]
        pages = sum(r["pages"] for r in runs)
        span = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        aggregate[phase] = {"pages": pages, "seconds": round(span, 4), "pps": pages / span}
        rates = [r["pps"] for r in runs]
        mean = statistics.fmean(rates)
        fairness[phase] = {"mean_pps": mean,
                           "max_deviation": max(abs(r - mean) / mean for r in rates)}
    return {"aggregate": aggregate, "fairness": fairness}


def run_load(spec: LoadSpec, clients: int, pages: list[bytes]) -> dict[str, Any]:
    """Run ``clients`` client processes over ``pages``; return the run's report."""
    ctx = multiprocessing.get_context("fork")  # children share the corpus without copying it
    barrier = ctx.Barrier(clients)
    pipes = [ctx.Pipe(duplex=False) for _ in range(clients)]
    procs = [ctx.Process(target=_client_process, args=(i, spec, pages, barrier, pipes[i][1]),
                         name=f"loadgen-{i}") for i in range(clients)]
    try:
        for proc in procs:
            proc.start()
        for _, sender in pipes:
            sender.close()  # each child has its copy
        collected = _collect(procs, [reader for reader, _ in pipes], BARRIER_TIMEOUT * 2)
    except LoadgenError:
        barrier.abort()  # the other clients stop waiting for the lost one
        raise
    finally:
        for proc in procs:
            if proc.pid is not None:
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
        for reader, _ in pipes:
            reader.close()
    errors = [r for r in collected if isinstance(r, str)]
    if errors:
        raise LoadgenError("; ".join(errors))
    per_client = [r for r in collected if isinstance(r, dict)]
    return {"clients": clients, "per_client": per_client, **_summarise(per_client)}


def _collect(procs: Sequence[BaseProcess], readers: Sequence[Connection],
             timeout: float) -> list[dict[str, Any] | str]:
    """One report per client, waiting on the reports and on the processes together: a
    client that exits without reporting is a :class:`LoadgenError` naming its exit code."""
    deadline = time.monotonic() + timeout
    reports: dict[int, dict[str, Any] | str] = {}
    while len(reports) < len(procs):
        waiting = [i for i in range(len(procs)) if i not in reports]
        ready = wait([readers[i] for i in waiting] + [procs[i].sentinel for i in waiting],
                     max(0.0, deadline - time.monotonic()))
        if not ready:
            raise LoadgenError(f"clients {waiting} did not report in {timeout:.0f} s")
        for i in waiting:
            exited = not procs[i].is_alive()  # first: a client reports before it exits
            report = _receive(readers[i])
            if report is not None:
                reports[i] = report
            elif exited:
                raise LoadgenError(f"client {i} exited without reporting "
                                   f"(exit code {procs[i].exitcode})")
    return [reports[i] for i in range(len(procs))]


def _receive(reader: Connection) -> dict[str, Any] | str | None:
    """The report waiting in ``reader``, or None (nothing yet, or closed without one)."""
    if not reader.poll():
        return None
    try:
        report: dict[str, Any] | str = reader.recv()
    except EOFError:
        return None
    return report


def _targets(runs: list[dict[str, Any]], baseline: dict[str, Any] | None) -> dict[str, Any]:
    targets: dict[str, Any] = {}

    def check(name: str, value: float, op: str, limit: float) -> None:
        targets[name] = target(value, op, limit)

    single = next((r for r in runs if r["clients"] == 1), None)
    for run in runs:
        n = run["clients"]
        if n == 1:
            continue
        for phase in PHASES:
            check(f"{n}_clients.{phase}_fairness", run["fairness"][phase]["max_deviation"],
                  "<=", TARGET_FAIRNESS)
            if single is not None:
                check(f"{n}_clients.{phase}_vs_1_client",
                      run["aggregate"][phase]["pps"] / single["aggregate"][phase]["pps"],
                      ">=", TARGET_MANY_VS_SINGLE)
    if single is not None and baseline is not None:
        store = baseline["stores"]["xvmalloc"]  # a persistent pool lives in xvmalloc
        for phase in ("put", "get"):
            check(f"1_client.{phase}_vs_inprocess",
                  single["aggregate"][phase]["pps"] / store[f"{phase}_pps"],
                  ">=", TARGET_SINGLE_VS_INPROCESS)
    return targets


def _best_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the highest put + get rate (the least disturbed by other load, as
    ``tmemd bench`` takes its best round), with every round's rates beside it."""
    def speed(run: dict[str, Any]) -> float:
        return float(run["aggregate"]["put"]["pps"] + run["aggregate"]["get"]["pps"])

    fastest = max(range(len(rounds)), key=lambda i: speed(rounds[i]))
    best = dict(rounds[fastest])
    best["rounds_pps"] = [{p: round(r["aggregate"][p]["pps"]) for p in PHASES} for r in rounds]
    return best


def run_loadgen(spec: LoadSpec, client_counts: list[int], npages: int, seed: int = 0,
                baseline: dict[str, Any] | None = None, repeat: int = 1,
                corpus: str = DEFAULT_CORPUS) -> dict[str, Any]:
    log.info("building the %s corpus of %d pages", corpus, npages)
    source = make_corpus(npages, seed, corpus)
    pages = source.pages
    keep_freed_memory()  # inherited by the client processes
    runs = []
    for clients in client_counts:
        log.info("%d clients x %d pages, batch %d, pipeline %d, %d rounds", clients, npages,
                 spec.batch, spec.pipeline, repeat)
        rounds = []
        for _ in range(repeat):
            rounds.append(run_load(spec, clients, pages))
            log.info("%d clients: %s", clients, ", ".join(
                f"{p} {rounds[-1]['aggregate'][p]['pps']:,.0f} pages/s" for p in PHASES))
        runs.append(_best_round(rounds))
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "socket": spec.socket,
        "pages": npages,
        "batch": spec.batch,
        "pipeline": spec.pipeline,
        "repeat": repeat,
        "corpus": describe_corpus(source),
        "runs": runs,
    }
    if baseline is not None:
        report["baseline"] = {"file": baseline.get("_file"), "codec": baseline.get("codec"),
                              "xvmalloc": baseline["stores"]["xvmalloc"]}
    report["targets"] = _targets(runs, baseline)
    return report


def _read_baseline(path: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
        data["stores"]["xvmalloc"]["put_pps"]  # noqa: B018 - checks the shape
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadgenError(f"baseline {path} is not a tmemd bench JSON file: {exc}") from exc
    data["_file"] = path
    return data


def _cmd_loadgen(args: argparse.Namespace) -> int:
    if not 1 <= args.batch <= wire.MAX_BATCH:
        raise UsageError(f"loadgen: --batch must be 1..{wire.MAX_BATCH}")
    if min(args.pipeline, args.pages, args.repeat, *args.clients) < 1:
        raise UsageError("loadgen: --clients, --pages, --pipeline and --repeat must be >= 1")
    try:
        baseline = _read_baseline(args.baseline) if args.baseline else None
        spec = LoadSpec(args.socket, args.batch, args.pipeline, args.timeout)
        report = run_loadgen(spec, args.clients, args.pages, args.seed, baseline, args.repeat,
                             args.corpus)
    except LoadgenError as exc:
        raise CommandError(f"loadgen: {exc}") from exc
    return finish_report(report, args.json, args.strict)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("loadgen", help="simulate guests against a running tmemd serve")
    parser.add_argument("--socket", required=True, help="the daemon's VM socket")
    parser.add_argument("--clients", type=int, nargs="+", default=[1], metavar="N",
                        help="client processes; several counts run one after another")
    parser.add_argument("--pages", type=int, default=5000, help="corpus pages per client")
    parser.add_argument("--pipeline", type=int, default=8, help="requests in flight per client")
    parser.add_argument("--batch", type=int, default=64, help="pages per request")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--corpus", choices=CORPUS_NAMES, default=DEFAULT_CORPUS,
                        help="synthetic: the same pages on every machine; host-files: pages "
                             "cut from this machine's files (differs by machine)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds per client count; the fastest round is reported")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per reply")
    parser.add_argument("--baseline", metavar="BENCH_JSON",
                        help="tmemd bench JSON from this machine, for the in-process comparison")
    parser.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.set_defaults(func=_cmd_loadgen)
