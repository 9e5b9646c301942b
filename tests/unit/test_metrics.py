"""Prometheus metrics scraped over real HTTP on 127.0.0.1, with the store on its own loop."""

import asyncio
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from test_control_support import TEXT_PAGE, SmallDaemon, event_loop_thread, populated_store

from tmemd.service.metrics import (
    MetricsServer,
    largest_clients,
    metric_name,
    start_metrics_server,
)
from tmemd.store.errors import ConfigError


@pytest.fixture
def daemon() -> Iterator[SmallDaemon]:
    small = SmallDaemon(populated_store())
    small.store.get(1, 0, (1, 0, 0), 0)
    yield small
    small.store.close()


def scrape(url: str) -> dict[str, tuple[str, list[Sample]]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def value(families: dict[str, tuple[str, list[Sample]]], sample_name: str, **labels: str) -> float:
    for _kind, samples in families.values():
        for sample in samples:
            matches = all(sample.labels.get(k) == v for k, v in labels.items())
            if sample.name == sample_name and matches:
                return sample.value
    raise AssertionError(f"no sample {sample_name} {labels}")


def test_scrape_over_http_reads_the_store_each_time(daemon: SmallDaemon) -> None:
    with event_loop_thread() as loop:
        server = MetricsServer("127.0.0.1", 0, daemon, loop)
        try:
            assert server.url == f"http://127.0.0.1:{server.port}/metrics"
            families = scrape(server.url)
            assert families["tmem_put"][0] == "counter"
            assert value(families, "tmem_put_total") == 16
            assert value(families, "tmem_get_hits_total") == 1
            assert families["tmem_curr_pers_pages"][0] == "gauge"
            assert value(families, "tmem_curr_pers_pages") == 8
            assert value(families, "tmem_memory_limit_bytes") == 16 << 20
            assert value(families, "tmem_compressed_bytes") > 0
            assert value(families, "tmem_client_pages", client="vm1", client_id="1") == 16
            assert value(families, "tmem_client_puts_total", client="vm1") == 16
            assert value(families, "tmem_client_quota_bytes", client="vm2") == 1 << 20
            assert value(families, "tmem_pool_pages", client="vm1", pool="0",
                         kind="persistent") == 8
            assert value(families, "tmem_zbud_unbuddied_list_count", free_chunks="0") >= 0
            assert families["tmem_op_latency_seconds"][0] == "histogram"
            assert value(families, "tmem_op_latency_seconds_count", op="put") == 2  # 1 in 8
            assert value(families, "tmem_op_latency_seconds_bucket", op="put", le="+Inf") == 2
            assert value(families, "process_resident_memory_bytes") > 0

            def more_puts() -> None:
                for index in range(8, 12):
                    daemon.store.put(1, 0, (1, 0, 0), index, TEXT_PAGE)

            loop.call_soon_threadsafe(more_puts)
            assert value(scrape(server.url), "tmem_put_total") == 20  # no cached counters
        finally:
            server.close()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(server.url, timeout=2)
        server.close()  # idempotent


def test_names_follow_the_prometheus_conventions(daemon: SmallDaemon) -> None:
    server = MetricsServer("127.0.0.1", 0, daemon)
    try:
        families = scrape(str(server.url))
    finally:
        server.close()
    tmem = {name: family for name, family in families.items() if name.startswith("tmem_")}
    assert len(tmem) > 40
    for name, (kind, samples) in tmem.items():
        assert re.fullmatch(r"tmem_[a-z0-9_]+", name), name
        assert "zbytes" not in name and not name.endswith("_total"), name
        for sample in samples:
            if kind == "counter":
                assert sample.name == name + "_total", sample.name
            if "bytes" in sample.name:
                assert re.search(r"_bytes(_total)?$", sample.name), sample.name
            if "client" in sample.labels:
                assert sample.labels["client"] in ("vm1", "vm2")


def test_metric_name_mapping() -> None:
    assert metric_name("put_total") == "tmem_put"
    assert metric_name("zbud_curr_zbytes") == "tmem_zbud_curr_compressed_bytes"
    assert metric_name("zbytes_stored") == "tmem_compressed_bytes"


def test_port_zero_is_off_and_remote_hosts_are_refused(daemon: SmallDaemon) -> None:
    off = start_metrics_server("127.0.0.1", 0, daemon)
    assert not off.enabled and off.url is None
    off.close()
    with pytest.raises(ConfigError, match="not a loopback address"):
        start_metrics_server("0.0.0.0", 9, daemon)


def test_start_from_the_event_loop_on_a_given_port(daemon: SmallDaemon) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def serve_and_scrape() -> float:
        server = start_metrics_server("127.0.0.1", port, daemon)
        try:
            assert server.port == port
            families = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
            return value(families, "tmem_curr_eph_pages")
        finally:
            server.close()

    assert asyncio.run(serve_and_scrape()) == 8


def test_beyond_max_clients_only_the_largest_are_itemised_and_the_rest_summed(
    daemon: SmallDaemon,
) -> None:
    for n in range(5):
        daemon.store.new_client(f"idle{n}")
    server = MetricsServer("127.0.0.1", 0, daemon, max_clients=1)
    try:
        families = scrape(str(server.url))
    finally:
        server.close()
    itemised = {s.labels["client"] for _kind, samples in families.values() for s in samples
                if "client" in s.labels}
    assert itemised == {"vm1"}  # the only client holding pages
    assert value(families, "tmem_omitted_clients") == 6
    assert value(families, "tmem_omitted_clients_pages") == 0
    assert value(families, "tmem_omitted_clients_compressed_bytes") == 0
    assert value(families, "tmem_clients_connected") == 7  # global figures cover everyone


def test_largest_clients_keeps_id_order_and_splits_off_the_rest() -> None:
    clients = [{"client_id": n, "zbytes": z, "pages": 1} for n, z in enumerate([5, 0, 9, 5, 1])]
    shown, omitted = largest_clients(clients, 3)
    assert [c["client_id"] for c in shown] == [0, 2, 3]
    assert [c["client_id"] for c in omitted] == [1, 4]
    assert largest_clients(clients, 10) == (clients, [])
