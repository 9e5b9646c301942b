"""`tmemd bench` end to end on a small corpus: the JSON has every figure the issue names."""

from __future__ import annotations

import json
from pathlib import Path

from tmemd.cli import main
from tmemd.tools.bench import optimal_zbud_frames


def test_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--pages", "1500", "--repeat", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "tmemd-bench/1"
    assert result["raw_compress_pps"] > 0 and result["raw_decompress_pps"] > 0
    for name in ("zbud", "xvmalloc"):
        store = result["stores"][name]
        for key in ("put_pps", "get_pps", "flush_pps", "host_bytes", "ideal_bytes"):
            assert store[key] > 0, (name, key)
        assert 0 < store["accepted_pages"] < 1500  # random pages are refused
        assert store["host_bytes"] >= store["ideal_bytes"] * 0.5
    assert result["stores"]["zbud"]["optimal_bytes"] <= result["stores"]["zbud"]["host_bytes"]
    assert set(result["targets"]) == {
        f"{store}.{check}"
        for store in ("zbud", "xvmalloc")
        for check in ("put_vs_raw_compress", "get_vs_raw_decompress", "host_vs_ideal_bytes")
    }


def test_optimal_pairing_is_exact_on_small_cases() -> None:
    assert optimal_zbud_frames([]) == 0
    assert optimal_zbud_frames([2000, 2000]) == 2  # 32 + 32 chunks: more than 63
    assert optimal_zbud_frames([2000, 1984]) == 1  # 32 + 31 chunks
    assert optimal_zbud_frames([3968]) == 1
    assert optimal_zbud_frames([3000, 1000, 3000, 900]) == 2
    assert optimal_zbud_frames([3000, 3000, 3000]) == 3
