"""Prometheus metrics for tmemd, read from the store at scrape time.

A custom collector turns ``store.stats()`` and ``store.client_stats()`` into metric families
on every scrape, so no counter is kept twice. Names follow the Prometheus conventions:
``tmem_`` prefix, ``_total`` on counters, ``_bytes`` for sizes, labels ``client`` (name),
``client_id`` and ``pool`` for per-client figures. Operation latencies become histograms in
seconds (``tmem_op_latency_seconds{op="put"}``).

With many clients a scrape would grow with them (and hold the event loop while it is read),
so per-client and per-pool families cover at most ``max_clients`` clients, those holding the
most compressed bytes; the rest are summed up in ``tmem_omitted_clients`` (how many),
``tmem_omitted_clients_pages`` and ``tmem_omitted_clients_compressed_bytes``. The store's
global figures always cover every client.

The HTTP endpoint (prometheus_client's threaded server) answers from its own thread; the store
belongs to the event loop's thread, so the collector reads it through the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..store.errors import ConfigError
from ..store.pools import Client, Pool
from ..store.statkinds import cumulative_fields
from ..store.statsreport import CUMULATIVE_KEYS
from .config import DEFAULT_METRICS_MAX_CLIENTS, is_loopback

if TYPE_CHECKING:
    from .control import ControlTarget

log = logging.getLogger(__name__)

PREFIX = "tmem_"
SCRAPE_TIMEOUT_S = 5.0
T = TypeVar("T")

# Lists of counts in store.stats(): the label that names a list position.
LIST_LABELS = {"zbud_unbuddied_list_counts": "free_chunks", "zbud_cumul_chunk_counts": "chunks"}
# Keys whose name does not say its unit.
RENAMES = {"zbytes_stored": "compressed_bytes", "clients": "clients_connected"}

# Per-client and per-pool numbers that are labels or flags rather than measurements.
CLIENT_LABEL_KEYS = frozenset({"client_id"})
POOL_LABEL_KEYS = frozenset({"pool_id", "flags", "shared"})
CLIENT_CUMULATIVE = cumulative_fields(Client)
POOL_CUMULATIVE = cumulative_fields(Pool)


def metric_name(key: str) -> str:
    """The Prometheus name (without ``_total``) of a stats key."""
    key = RENAMES.get(key, key)
    key = key.replace("zbytes", "compressed_bytes").replace("zpages", "compressed_pages")
    if key.endswith("_total"):
        key = key[: -len("_total")]
    return PREFIX + key


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


Family = CounterMetricFamily | GaugeMetricFamily


def _family(name: str, documentation: str, counter: bool, labels: list[str]) -> Family:
    if counter:
        return CounterMetricFamily(name, documentation, labels=labels)
    return GaugeMetricFamily(name, documentation, labels=labels)


def global_families(stats: dict[str, Any]) -> Iterator[Metric]:
    """Metric families for one ``store.stats()`` snapshot."""
    for key, value in stats.items():
        counter = key in CUMULATIVE_KEYS
        if key == "latency_ns":
            yield from latency_families(value)
        elif key in LIST_LABELS and isinstance(value, list):
            family = _family(metric_name(key.removesuffix("s")), f"tmem {key}", counter,
                             [LIST_LABELS[key]])
            for position, count in enumerate(value):
                family.add_metric([str(position)], float(count))
            yield family
        elif (number := _number(value)) is not None:
            family = _family(metric_name(key), f"tmem {key}", counter, [])
            family.add_metric([], number)
            yield family


def latency_families(latency: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """One histogram (seconds) over the store's power-of-two nanosecond buckets."""
    family = HistogramMetricFamily(
        PREFIX + "op_latency_seconds", "tmem operation latency", labels=["op"]
    )
    for op, histogram in latency.items():
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound_ns, count in sorted((int(b), c) for b, c in histogram["buckets"].items()):
            cumulative += count
            buckets.append((repr(bound_ns / 1e9), float(cumulative)))
        buckets.append(("+Inf", float(histogram["samples"])))
        family.add_metric([op], buckets, histogram["sum_ns"] / 1e9)
    yield family


def client_families(clients: list[dict[str, Any]]) -> Iterator[Metric]:
    """Per-client and per-pool families, labelled by client name and id (and pool id).

    Every number in a client's or pool's stats becomes a family; whether it is a counter comes
    from the field's own declaration (:func:`~tmemd.store.statkinds.cumulative`).
    """
    client_labels = ["client", "client_id"]
    pool_labels = client_labels + ["pool", "kind"]
    families: dict[str, Family] = {}

    def add(scope: str, key: str, counter: bool, labels: list[str], values: list[str],
            number: float) -> None:
        family = families.get(f"{scope}.{key}")
        if family is None:
            family = families[f"{scope}.{key}"] = _family(
                metric_name(f"{scope}_{key}"), f"tmem per-{scope} {key}", counter, labels
            )
        family.add_metric(values, number)

    for client in clients:
        labels = [str(client["name"]), str(client["client_id"])]
        for key, value in client.items():
            if key not in CLIENT_LABEL_KEYS and (number := _number(value)) is not None:
                add("client", key, key in CLIENT_CUMULATIVE, client_labels, labels, number)
        for pool in client.get("pools", []):
            pool_label = labels + [str(pool["pool_id"]), str(pool["kind"])]
            for key, value in pool.items():
                if key not in POOL_LABEL_KEYS and (number := _number(value)) is not None:
                    add("pool", key, key in POOL_CUMULATIVE, pool_labels, pool_label, number)
    yield from families.values()


def omitted_families(omitted: list[dict[str, Any]]) -> Iterator[Metric]:
    """How many clients the per-client families leave out, and what they hold together."""
    for name, key, help_text in (
        ("omitted_clients", None, "clients left out of the per-client families"),
        ("omitted_clients_pages", "pages", "pages of the clients left out"),
        ("omitted_clients_compressed_bytes", "zbytes", "compressed bytes of the clients left out"),
    ):
        family = GaugeMetricFamily(PREFIX + name, f"tmem {help_text}")
        family.add_metric([], float(len(omitted) if key is None
                                    else sum(c.get(key, 0) for c in omitted)))
        yield family


def largest_clients(
    clients: list[dict[str, Any]], limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the ``limit`` clients holding the most bytes, in id order; the others). Bytes are
    what the client is charged where the store says so, its compressed bytes otherwise."""
    if len(clients) <= limit:
        return clients, []

    def held(client: dict[str, Any]) -> tuple[int, int]:
        return client.get("charged_bytes", client.get("zbytes", 0)), client.get("pages", 0)

    kept = {id(c) for c in heapq.nlargest(limit, clients, key=held)}
    return ([c for c in clients if id(c) in kept], [c for c in clients if id(c) not in kept])


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class StoreCollector(Collector):
    """Reads the store on each scrape, on the thread that owns it."""

    def __init__(self, daemon: ControlTarget, loop: asyncio.AbstractEventLoop | None,
                 max_clients: int = DEFAULT_METRICS_MAX_CLIENTS) -> None:
        self.daemon = daemon
        self.loop = loop
        self.max_clients = max_clients

    def _snapshot(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        store = self.daemon.store
        return store.stats(), [store.client_stats(cid) for cid in store.clients()]

    def _on_store_thread(self, read: Callable[[], T]) -> T:
        loop = self.loop
        if loop is None or _running_loop() is loop:
            return read()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(read())
            except BaseException as exc:  # handed to the scraping thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=SCRAPE_TIMEOUT_S)

    def collect(self) -> Iterator[Metric]:
        stats, clients = self._on_store_thread(self._snapshot)
        shown, omitted = largest_clients(clients, self.max_clients)
        yield from global_families(stats)
        yield from client_families(shown)
        yield from omitted_families(omitted)


class MetricsServer:
    """An HTTP endpoint serving ``/metrics``; ``close()`` stops it (idempotent).

    ``port`` 0 binds an ephemeral port (see ``.port``); :func:`start_metrics_server` is the
    entry point that treats 0 as "off".
    """

    def __init__(
        self,
        host: str,
        port: int,
        daemon: ControlTarget,
        loop: asyncio.AbstractEventLoop | None = None,
        max_clients: int = DEFAULT_METRICS_MAX_CLIENTS,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(daemon, loop, max_clients))
        ProcessCollector(registry=self.registry)
        self.host = host
        self._httpd: WSGIServer | None
        self._thread: threading.Thread | None
        self._httpd, self._thread = start_http_server(port, host, self.registry)
        self.port: int = self._httpd.server_address[1]
        log.info("Prometheus metrics on %s", self.url)

    @classmethod
    def disabled(cls) -> MetricsServer:
        server = cls.__new__(cls)
        server.host, server.port, server._httpd, server._thread = "", 0, None, None
        return server

    @property
    def enabled(self) -> bool:
        return self._httpd is not None

    @property
    def url(self) -> str | None:
        if not self.port:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=10)


def start_metrics_server(
    host: str, port: int, daemon: ControlTarget, allow_remote: bool = False,
    max_clients: int = DEFAULT_METRICS_MAX_CLIENTS,
) -> MetricsServer:
    """Serve metrics on ``host:port``; port 0 means off (a server whose close() does nothing).
    Per-client families cover at most ``max_clients`` clients (the largest).

    Called from the event loop that owns the store (scrapes are run on that loop).
    """
    if not port:
        return MetricsServer.disabled()
    if not allow_remote and not is_loopback(host):
        raise ConfigError(f"metrics host {host!r} is not a loopback address")
    return MetricsServer(host, port, daemon, _running_loop(), max_clients)
