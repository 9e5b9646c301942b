"""`tmemd bench` end to end on a small corpus, and the packing bounds its density is judged by.

Only the report's structure and the relations between its figures are checked: whether the
speed targets are met depends on the machine, so no test asks.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmemd.cli import main
from tmemd.tools.bench import SCHEMA, run_bench, spread
from tmemd.tools.corpus import SYNTHETIC_SHARES, UnknownCorpusError
from tmemd.tools.packing import (
    first_fit_decreasing,
    martello_toth_l2,
    optimal_zbud_frames,
    packing_lower_bound,
    volume_bound,
    xvmalloc_block_bytes,
    xvmalloc_bounds,
)

PAGES = 1500
REPEAT = 2


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench", "--pages", str(PAGES), "--repeat", str(REPEAT), "--json", str(out)]
    assert main(argv) == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_the_report_names_its_corpus(report: dict[str, Any]) -> None:
    assert report["schema"] == SCHEMA == "tmemd-bench/2"
    described = report["corpus"]
    assert described["name"] == "synthetic" and described["seed"] == 0
    assert described["pages"] == PAGES and len(described["sha256"]) == 64
    assert {k: v["share"] for k, v in described["kinds"].items()} == SYNTHETIC_SHARES


def test_speed_ratios_are_medians_with_their_spread(report: dict[str, Any]) -> None:
    assert report["raw_compress_pps"] > 0 and report["raw_decompress_pps"] > 0
    for name in ("zbud", "xvmalloc"):
        store = report["stores"][name]
        for key in ("put_pps", "get_pps", "flush_pps", "raw_compress_pps", "raw_decompress_pps"):
            assert store[key] > 0, (name, key)
        for key in ("put_vs_raw_compress", "get_vs_raw_decompress"):
            ratio = store[key]
            assert len(ratio["rounds"]) == REPEAT
            assert ratio["min"] <= ratio["q1"] <= ratio["median"] <= ratio["q3"] <= ratio["max"]
            assert report["targets"][f"{name}.{key}"]["ratio"] == ratio["median"]
            assert report["targets"][f"{name}.{key}"]["target"] == ">= 0.7"


def test_density_sits_between_the_bounds(report: dict[str, Any]) -> None:
    zbud = report["stores"]["zbud"]["density"]
    xv = report["stores"]["xvmalloc"]["density"]
    for density in (zbud, xv):
        assert 0 < density["accepted_pages"] < PAGES  # random pages are refused
        assert density["host_bytes"] == density["host_frames"] * 4096
        assert density["ideal_frames"] * 4096 >= density["ideal_bytes"]
    assert zbud["packing_bound"] == "optimal_frames"
    assert zbud["ideal_frames"] <= zbud["optimal_frames"] <= zbud["host_frames"]
    assert xv["packing_bound"] == "ffd_frames"
    assert xv["ideal_frames"] <= xv["volume_frames"] <= xv["lower_bound_frames"]
    assert xv["lower_bound_frames"] <= xv["ffd_frames"]
    assert xv["lower_bound_frames"] <= xv["host_frames"]  # no allocator beats a lower bound
    assert xv["ideal_bytes"] <= xv["block_bytes"]
    for name, density in (("zbud", zbud), ("xvmalloc", xv)):
        bound = density[density["packing_bound"]]
        assert density["host_vs_packing_bound"] == round(density["host_frames"] / bound, 4)
        density_target = report["targets"][f"{name}.host_vs_packing_bound"]
        assert density_target["target"] == "<= 1.05"
    assert set(report["targets"]) == {
        f"{store}.{check}"
        for store in ("zbud", "xvmalloc")
        for check in ("put_vs_raw_compress", "get_vs_raw_decompress", "host_vs_packing_bound")
    }
    assert set(report["definitions"]) >= {"ffd_frames", "lower_bound_frames", "packing_bound"}


def test_an_unknown_corpus_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["bench", "--pages", "10", "--corpus", "usr"])
    except SystemExit as exc:  # argparse's own way out of a usage error
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    assert "invalid choice: 'usr'" in capsys.readouterr().err
    with pytest.raises(UnknownCorpusError):
        run_bench(10, repeat=1, corpus="usr")


def test_spread_of_one_and_of_several_rounds() -> None:
    assert spread([0.5]) == {"median": 0.5, "min": 0.5, "q1": 0.5, "q3": 0.5, "max": 0.5,
                             "rounds": [0.5]}
    five = spread([0.9, 0.5, 0.7, 0.6, 0.8])
    assert (five["min"], five["q1"], five["median"], five["q3"], five["max"]) == (
        0.5, 0.6, 0.7, 0.8, 0.9)
    assert five["rounds"] == [0.9, 0.5, 0.7, 0.6, 0.8]


# ----- packing bounds ------------------------------------------------------------------------
def optimum(items: list[int], capacity: int) -> int:
    """Fewest bins, by exhaustive search (small cases only)."""
    items = sorted(items, reverse=True)
    best = len(items)

    def place(i: int, bins: list[int]) -> None:
        nonlocal best
        if len(bins) >= best:
            return
        if i == len(items):
            best = len(bins)
            return
        tried: set[int] = set()
        for b, used in enumerate(bins):
            if used + items[i] <= capacity and used not in tried:
                tried.add(used)
                bins[b] += items[i]
                place(i + 1, bins)
                bins[b] -= items[i]
        bins.append(items[i])
        place(i + 1, bins)
        bins.pop()

    place(0, [])
    return best


@pytest.mark.parametrize(
    ("items", "volume", "l2", "opt", "ffd"),
    [
        ([], 0, 0, 0, 0),
        ([8], 1, 1, 1, 1),
        ([5, 5, 5, 5], 2, 2, 2, 2),
        ([8, 6, 5], 2, 3, 3, 3),  # three items over half a bin: L2 sees it, the volume not
        ([5, 4, 4, 4, 3], 2, 2, 3, 3),  # the lower bound is not always reachable
        ([9, 5, 4, 4, 3, 2, 2], 3, 3, 3, 4),  # first-fit-decreasing is not always optimal
    ],
)
def test_packing_bounds_on_small_cases(
    items: list[int], volume: int, l2: int, opt: int, ffd: int
) -> None:
    assert volume_bound(items, 10) == volume
    assert martello_toth_l2(items, 10) == l2
    assert packing_lower_bound(items, 10) == max(volume, l2)
    assert optimum(items, 10) == opt
    assert first_fit_decreasing(items, 10) == ffd


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 30).flatmap(
    lambda cap: st.tuples(st.just(cap), st.lists(st.integers(1, cap), max_size=8))))
def test_lower_bound_optimum_and_ffd_are_ordered(case: tuple[int, list[int]]) -> None:
    capacity, items = case
    lower = packing_lower_bound(items, capacity)
    best = optimum(items, capacity)
    ffd = first_fit_decreasing(items, capacity)
    assert volume_bound(items, capacity) <= lower <= best <= ffd
    assert 9 * ffd <= 11 * best + 6  # the known worst case of first-fit-decreasing


def naive_ffd(items: list[int], capacity: int) -> int:
    bins: list[int] = []
    for size in sorted(items, reverse=True):
        for b, used in enumerate(bins):
            if used + size <= capacity:
                bins[b] += size
                break
        else:
            bins.append(size)
    return len(bins)


def test_ffd_matches_a_plain_first_fit_on_larger_cases() -> None:
    rng = random.Random(0)
    for n in (1, 2, 3, 50, 300, 1000):
        items = [rng.randint(36, 4096) for _ in range(n)]
        assert first_fit_decreasing(items, 4096) == naive_ffd(items, 4096)


def test_items_that_do_not_fit_a_bin_are_refused() -> None:
    for bad in ([11], [0], [-1]):
        with pytest.raises(ValueError):
            first_fit_decreasing(bad, 10)
        with pytest.raises(ValueError):
            packing_lower_bound(bad, 10)


def test_xvmalloc_blocks_and_their_bounds() -> None:
    assert xvmalloc_block_bytes(1) == 36  # header + the 32-byte minimum block
    assert xvmalloc_block_bytes(32) == 36
    assert xvmalloc_block_bytes(33) == 40  # payloads round up to 4 bytes
    assert xvmalloc_block_bytes(4092) == 4096  # one block fills a frame
    bounds = xvmalloc_bounds([2100, 2100, 2100, 1000, 900])
    assert bounds["ideal_bytes"] == 8200 and bounds["ideal_frames"] == 3
    assert bounds["block_bytes"] == 3 * 2104 + 1004 + 904
    assert bounds["volume_frames"] == 3
    assert bounds["lower_bound_frames"] == 3  # three blocks over half a frame
    assert bounds["ffd_frames"] == 3


def test_optimal_pairing_is_exact_on_small_cases() -> None:
    assert optimal_zbud_frames([]) == 0
    assert optimal_zbud_frames([2000, 2000]) == 2  # 32 + 32 chunks: more than 63
    assert optimal_zbud_frames([2000, 1984]) == 1  # 32 + 31 chunks
    assert optimal_zbud_frames([3968]) == 1
    assert optimal_zbud_frames([3000, 1000, 3000, 900]) == 2
    assert optimal_zbud_frames([3000, 3000, 3000]) == 3
