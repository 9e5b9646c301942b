"""The guest's data: pages about 2:1 with lzo (the store's codec), random pages that do not
compress, the same bytes from the same seed, and a source-tree-like plan."""

from __future__ import annotations

import zlib

import lzo
import pytest

from tmemh.suite.guest.datagen import PAGE, STAMP, STAMP_MAGIC, ContentPool
from tmemh.suite.guest.tree import COMPRESSED_EVERY, plan_tree, verify_tree, write_tree


def lzo_ratio(pages: list[bytes]) -> float:
    # python-lzo prefixes a 5-byte header; lzo1x-1 is level 1
    return len(pages) * PAGE / sum(len(lzo.compress(page, 1)) - 5 for page in pages)


@pytest.fixture(scope="module")
def pool() -> ContentPool:
    return ContentPool(1)


def test_realistic_pages_compress_about_two_to_one_with_lzo(pool: ContentPool) -> None:
    pages = [bytes(pool.page(i)) for i in range(3000)]
    assert 1.8 <= lzo_ratio(pages) <= 2.3
    sizes = sorted(len(lzo.compress(p, 1)) for p in pages)
    assert sizes[len(sizes) // 10] > 1024  # no flood of trivially compressible pages


def test_random_pages_do_not_compress(pool: ContentPool) -> None:
    assert lzo_ratio([bytes(pool.random_page(i)) for i in range(300)]) < 1.01


def test_the_same_seed_gives_the_same_bytes_and_pages_carry_their_number() -> None:
    one, two = ContentPool(7), ContentPool(7)
    assert [one.page(i) for i in range(50)] == [two.page(i) for i in range(50)]
    assert one.body(10_000) == two.body(10_000)
    assert ContentPool(8).page(0) != ContentPool(7).page(0)
    page = ContentPool(7).page(1234)
    offset = (1234 * 64) % (PAGE - STAMP.size)
    assert STAMP.unpack_from(page, offset) == (1234, STAMP_MAGIC)


def test_tree_plan_is_a_source_tree_with_compressed_members_and_large_files() -> None:
    plan = plan_tree(3, 40 << 20, 2000)
    assert plan == plan_tree(3, 40 << 20, 2000)
    kinds = [p.kind for p in plan]
    assert kinds.count("gzip") + kinds.count("noise") == 2000 // COMPRESSED_EVERY
    assert kinds.count("large") >= 1
    assert sum(p.size for p in plan) <= 40 << 20
    assert len({p.path for p in plan}) == len(plan)
    small = sorted(p.size for p in plan if p.kind == "text")
    assert 1024 < small[len(small) // 2] < 8192


def test_tree_written_and_verified_finds_a_changed_and_a_missing_file(tmp_path) -> None:
    plan = plan_tree(5, 2 << 20, 200)
    manifest = write_tree(str(tmp_path), ContentPool(5), plan)
    assert verify_tree(str(tmp_path), manifest)["bad_files"] == 0
    gz = next(p.path for p in plan if p.kind == "gzip")
    assert zlib.decompressobj().decompress((tmp_path / gz).read_bytes())  # real deflate data
    changed = tmp_path / plan[0].path
    data = bytearray(changed.read_bytes())
    data[0] ^= 1
    changed.write_bytes(bytes(data))
    (tmp_path / plan[1].path).unlink()
    check = verify_tree(str(tmp_path), manifest)
    assert check["bad_files"] == 2 and check["files"] == len(plan)
    assert plan[0].path in check["first_bad"][0] and "No such file" in check["first_bad"][1]
