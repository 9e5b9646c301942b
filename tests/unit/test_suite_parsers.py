"""The collectors' raw formats, parsed from samples captured in a real guest and on the host
(tests/unit/data/suite-*: a guest with zswap on zsmalloc and a zram swap, a guest swapping
through the agent's swap shim, and the host side of that cell with tmemd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemh.suite.parsers import (
    RawFormatError,
    parse_guest,
    parse_host,
    parse_keyvalues,
    parse_meminfo,
    parse_proc_stat,
    parse_proc_status,
    parse_psi,
    parse_swaps,
    parse_vmstat,
    parse_zram,
    split_guest_samples,
)
from tmemh.suite.series import guest_figures, guest_series, host_figures, host_series

DATA = Path(__file__).parent / "data"
GUEST = (DATA / "suite-guest-samples.txt").read_text()
GUEST_AGENT = (DATA / "suite-guest-samples-agent.txt").read_text()
HOST = (DATA / "suite-host-samples.jsonl").read_text()


def test_guest_file_splits_into_timestamped_sections_per_source() -> None:
    raw = split_guest_samples(GUEST)
    assert raw.header == {"interval": 1.0}
    assert len(raw.get("vmstat")) == 3 and len(raw.get("zswap-params")) == 1
    times = [t for t, _ in raw.get("vmstat")]
    assert times == sorted(times) and times[-1] - times[0] == pytest.approx(2.0, abs=0.2)
    assert raw.end["cpu_s"] > 0 and raw.end["samples"] == 30


def test_vmstat_meminfo_psi_swaps_from_a_real_guest() -> None:
    raw = split_guest_samples(GUEST)
    vmstat = parse_vmstat(raw.get("vmstat")[0][1])
    assert vmstat["pswpout"] > 0 and "nr_free_pages" in vmstat
    meminfo = parse_meminfo(raw.get("meminfo")[0][1])
    assert 150 << 20 < meminfo["MemTotal"] < 256 << 20  # a 256 MiB guest, in bytes
    assert meminfo["SwapTotal"] == (300 << 20) - 4096  # the zram disk less its header page
    assert meminfo["HugePages_Total"] == 0  # a count, not kB
    psi = parse_psi(raw.get("psi-memory")[0][1])
    assert set(psi) == {"some", "full"} and set(psi["some"]) == {"avg10", "avg60", "avg300",
                                                                 "total"}
    assert psi["some"]["total"] >= psi["full"]["total"] > 0
    (zram,) = parse_swaps(raw.get("swaps")[0][1])
    assert zram["name"] == "/dev/zram0" and zram["size_kib"] == 300 * 1024 - 4


def test_zswap_debugfs_parameters_and_zram_stats() -> None:
    parsed = parse_guest(GUEST)
    zswap = parsed.get("zswap")[0][1]
    assert zswap["stored_pages"] == 841 and zswap["pool_limit_hit"] == 38982
    params = parsed.get("zswap-params")[0][1]
    assert params["zpool"] == "zsmalloc" and params["compressor"] == "lzo"
    assert params["max_pool_percent"] == 20 and params["enabled"] == "Y"
    zram = parsed.get("zram")[0][1]
    assert zram["disksize"] == 314572800
    assert zram["orig_data_size"] == 102400 and zram["compr_data_size"] == 82965
    assert zram["notify_free"] == 92032 and zram["bd_count"] == 0
    assert parsed.get("self")[0][1]["cpu_s"] == "0.540"


def test_agent_status_sections_are_json() -> None:
    parsed = parse_guest(GUEST_AGENT)
    status = parsed.get("agent")[-1][1]
    assert status["counters"]["puts_stored"] >= 1 and "refusals" in status
    assert parsed.end == {}  # cut before the monitor's closing record


def test_a_file_that_is_not_guest_samples_is_refused() -> None:
    with pytest.raises(RawFormatError):
        split_guest_samples("vmstat 1\n")
    with pytest.raises(RawFormatError):
        split_guest_samples("#tmemh-guest-samples 1\n@ 12\n")


def test_host_samples_qemu_blockstats_and_tmemd() -> None:
    host = parse_host(HOST)
    assert host.header["format"] == "tmemh-host-samples/1" and host.header["clk_tck"] == 100
    (t0, first), (t1, second) = host.get("qemu-stat")
    assert second["cpu_s"] >= first["cpu_s"] > 0 and t1 > t0
    assert host.get("qemu-status")[0][1]["rss_bytes"] > 100 << 20
    blocks = [b for _, b in host.get("blockstats")]
    assert blocks[1]["write_bytes"] >= blocks[0]["write_bytes"]
    tmemd = host.get("tmemd")[0][1]
    assert tmemd["client"]["name"] == host.header["vm"] and tmemd["client"]["pages"] > 0
    assert tmemd["global"]["compression_ratio"] > 1.5
    assert host.end["cpu_s"] > 0


def test_proc_parsers_take_a_command_with_spaces_and_units() -> None:
    stat = "42 (qemu system x86) S 1 42 42 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 1 1 1"
    assert parse_proc_stat(stat, 100) == {"utime_s": 2.5, "stime_s": 0.5, "cpu_s": 3.0}
    assert parse_proc_status("VmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n") == {
        "hwm_bytes": 2 << 20, "rss_bytes": 1 << 20}
    assert parse_keyvalues("a 1\nb x y\n\n") == {"a": 1, "b": "x y"}
    assert parse_zram("disksize 10\nmm_stat 1 2\n") == {"disksize": 10, "orig_data_size": 1,
                                                        "compr_data_size": 2}


def test_series_and_figures_from_the_captured_samples() -> None:
    guest = parse_guest(GUEST)
    t0 = guest.get("vmstat")[0][0]
    groups = guest_series(guest, t0)
    assert set(groups) >= {"swap", "psi", "memory", "stored"}
    assert groups["swap"]["t"] == [pytest.approx(1.0, abs=0.1), pytest.approx(2.0, abs=0.1)]
    assert set(groups["swap"]["lines"]) == {"swap in", "swap out", "major faults"}
    assert "zswap stored pages" in groups["stored"]["lines"]
    figures = guest_figures(guest)
    assert figures["zswap_stored_pages_peak"] == 841 and figures["collector_samples"] == 3
    assert figures["collector_cpu_s"] == pytest.approx(0.0, abs=0.05)  # 2 idle samples
    host = parse_host(HOST)
    hgroups = host_series(host, host.get("blockstats")[0][0])
    assert set(hgroups) >= {"disk", "qemu_cpu", "qemu_rss", "stored", "tmem_ops"}
    hfigures = host_figures(host)
    assert hfigures["tmem_stored_pages_peak"] > 0 and hfigures["qemu_cpu_s"] > 0
