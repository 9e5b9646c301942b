"""Suite files: what they resolve to, the matrix they expand to, and one-line usage errors
for everything wrong in them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemh.suite.errors import SuiteError
from tmemh.suite.suitefile import load_suite, parse_suite

REPO = Path(__file__).resolve().parents[2]

BASIC = {
    "suite": {"name": "s1", "workloads": ["tar", "anon-random"],
              "configurations": ["disk-swap", "zswap-zsmalloc"], "throttle": ["hdd", "slow"],
              "repetitions": 2, "collectors": ["on", "off"]},
    "vm": {"memory": "384M", "cpus": 2, "disk_size": "4G"},
    "workload": {"tar": {"scale": 0.5, "compression": "xz", "timeout": 600}},
    "configuration": {"zswap-zsmalloc": {"max_pool_percent": 40}},
    "throttle_profile": {"slow": {"bps": "10M", "iops": 100}},
}


def test_a_suite_resolves_names_parameters_and_profiles() -> None:
    suite = parse_suite(BASIC)
    tar, random_anon = suite.workloads
    assert (tar.kind, tar.params, tar.timeout) == ("tar", {"scale": 0.5, "compression": "xz"},
                                                   600.0)
    assert (random_anon.kind, random_anon.params) == ("anon", {"pages": "random"})
    zswap = suite.configurations[1]
    assert zswap.kind == "zswap" and zswap.params["zpool"] == "zsmalloc"
    assert zswap.params["max_pool_percent"] == 40 and zswap.needs.guest_modules == ("zsmalloc",)
    hdd, slow = suite.throttles
    assert (hdd.bytes_per_second, hdd.iops) == (20_000_000, 200)
    assert (slow.bytes_per_second, slow.iops) == (10 << 20, 100)
    (shape,) = suite.shapes
    assert (shape.name, shape.memory_mib, shape.vcpus, shape.disk_size_mib) == ("384Mx2", 384,
                                                                                 2, 4096)
    resolved = suite.describe()
    assert resolved["configurations"][1]["params"]["compressor"] == "lzo"
    assert resolved["collectors"] == ["on", "off"]


def test_the_matrix_puts_repetitions_outermost_with_unique_ids() -> None:
    cells = parse_suite(BASIC).cells()
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    assert [c.index for c in cells] == list(range(len(cells)))
    assert len({c.id for c in cells}) == len(cells)
    assert cells[0].id == "tar.disk-swap.hdd.384Mx2.r1"
    assert cells[1].id == "tar.disk-swap.hdd.384Mx2.r1.nocollect"
    assert {c.repetition for c in cells[:16]} == {1}
    assert cells[0].group == cells[16].group


def test_the_demo_suite_loads() -> None:
    suite = load_suite(REPO / "suites" / "demo.toml")
    assert [w.name for w in suite.workloads] == ["rsync", "tar", "anon"]
    assert [c.name for c in suite.configurations] == ["disk-swap", "zswap", "tmem-swap", "tmem"]
    assert [t.name for t in suite.throttles] == ["hdd"]


@pytest.mark.parametrize("path", sorted((REPO / "suites").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_suite_loads(path: Path) -> None:
    assert load_suite(path).cells()


def test_the_collector_cost_suite_alternates_with_and_without() -> None:
    cells = load_suite(REPO / "suites" / "collector-cost.toml").cells()
    assert [c.collectors for c in cells] == [True, False] * (len(cells) // 2)


@pytest.mark.parametrize(("change", "message"), [
    ({"suite": {"workloads": ["tar"]}}, "needs configurations"),
    ({"suite": {"workloads": ["nope"], "configurations": ["none"]}}, "workload nope: unknown"),
    ({"suite": {"workloads": ["tar"], "configurations": ["zfs"]}}, "configuration zfs: unknown"),
    ({"suite": {"workloads": ["tar"], "configurations": ["none"], "throttle": ["tape"]}},
     "unknown throttle profile 'tape'"),
    ({"suite": {"workloads": ["tar", "tar"], "configurations": ["none"]}}, "twice"),
    ({"suite": {"workloads": ["tar"], "configurations": ["none"], "repetitons": 2}},
     "unknown keys ['repetitons']"),
    ({"suite": {"workloads": ["tar"], "configurations": ["none"]}, "workload": {"tar": {
        "scael": 1}}}, "unknown parameter 'scael'"),
    ({"suite": {"workloads": ["tar"], "configurations": ["none"]}, "workload": {"tar": {
        "scale": -1}}}, "scale must be a number >= 0"),
    ({"suite": {"workloads": ["tar"], "configurations": ["zswap"]}, "configuration": {
        "zswap": {"zpool": "zfs"}}}, "zpool must be one of"),
    ({"suite": {"workloads": ["tar"], "configurations": ["none"]}, "vm": {"memory": "1.5G"}},
     "vm memory"),
    ({"suite": {"workloads": ["tar"], "configurations": ["none"], "collectors": ["maybe"]}},
     "collectors must list"),
    ({"suite": {"workloads": ["tar"], "configurations": ["none"], "sample_interval": 0}},
     "sample_interval"),
])
def test_mistakes_are_usage_errors(change: dict[str, object], message: str) -> None:
    with pytest.raises(SuiteError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_suite(change)


def test_a_file_that_is_not_toml_or_not_there(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[suite\n")
    with pytest.raises(SuiteError, match="not valid TOML"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="cannot read suite file"):
        load_suite(tmp_path / "missing.toml")
