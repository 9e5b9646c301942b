"""``tmem-agent run --cache-disk``: the block cache served inside the swap agent, on its one
stream to tmemd (a fake daemon speaking the real protocol), beside the swap device."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_swap_shim import PAGE, AgentThread, FakeTmemd, page

from tmem_agent import service
from tmem_agent.cache import embedded
from tmem_agent.channel import wire
from tmem_agent.swap.tmemlink import PERSIST

DISK_BYTES = 8 << 20


class CacheFakeTmemd(FakeTmemd):
    """The fake daemon with the requests an ephemeral pool adds: DESTROY_POOL, FLUSH_OBJECT."""

    def _handle(self, op: int, payload: bytes) -> bytes:
        if op == wire.Op.DESTROY_POOL:
            pool = wire.parse_u32(payload)
            self.ops.append((op, pool))
            self.pools.pop(pool, None)
            gone = [h for h in self.store if h[0] == pool]
            for handle in gone:
                del self.store[handle]
            return wire.u32(len(gone))
        if op == wire.Op.FLUSH_OBJECT:
            pool, oid = wire.parse_object(payload)
            gone = [h for h in self.store if h[0] == pool and h[1] == oid]
            for handle in gone:
                del self.store[handle]
            return wire.u32(len(gone))
        return super()._handle(op, payload)

    def pool_of(self, flags: int) -> list[int]:
        return [p for p, f in self.pools.items() if f & PERSIST == flags]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[CacheFakeTmemd]:
    daemon = CacheFakeTmemd(str(tmp_path / "tmemd.sock"))
    yield daemon
    daemon.close()


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(page(i) for i in range(DISK_BYTES // PAGE)))
    return path


def start(tmp_path: Path, fake: FakeTmemd, disk: Path) -> AgentThread:
    return AgentThread(tmp_path, fake.path, cache_disk=disk, cache_slots=64,
                       cache_threads=2)


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def cache_status(agent: AgentThread) -> dict[str, object]:
    status = agent.status()
    found = status["cache"]
    assert isinstance(found, dict)
    cache: dict[str, object] = found[embedded.NAME]
    return cache


def test_one_stream_serves_swap_and_the_cache(tmp_path: Path, fake: CacheFakeTmemd,
                                              disk: Path) -> None:
    agent = start(tmp_path, fake, disk)
    try:
        assert len(fake.conns) == 1  # one connection drives the VM
        assert len(fake.pool_of(PERSIST)) == 1 and len(fake.pool_of(0)) == 1
        ready = json.loads((tmp_path / "run" / "ready").read_text())
        assert ready["cache"] == "ready" and ready["cache_device"] == "/dev/nbd1"
        assert ready["cache_disk"] == str(disk)
        swap = agent.client()
        swap.write(0, page(7, fill=1))
        nbd = type(swap)(agent.nbd_path)
        nbd.go(embedded.NAME)
        assert nbd.read(5 * PAGE, 3 * PAGE) == page(5) + page(6) + page(7)  # misses, put
        assert nbd.read(5 * PAGE, 3 * PAGE) == page(5) + page(6) + page(7)  # hits
        nbd.write(6 * PAGE, page(1000))
        assert nbd.read(5 * PAGE, 3 * PAGE) == page(5) + page(1000) + page(7)
        assert disk.read_bytes()[6 * PAGE:7 * PAGE] == page(1000)
        assert swap.read(0, PAGE) == page(7, fill=1)
        status = cache_status(agent)
        counters = status["counters"]
        assert isinstance(counters, dict)
        assert counters["hits"] >= 3 and counters["misses"] == 3
        assert status["phase"] == "ready" and status["device"] == "/dev/nbd1"
        assert agent.status()["phase"] == "ready"
        nbd.close()
        swap.close()
    finally:
        agent.stop()
    assert not (tmp_path / "run" / "ready").exists()
    assert fake.pool_of(0) == []  # the cache gave its pool back


def test_a_restarted_agent_destroys_its_predecessors_cache_pool(tmp_path: Path,
                                                                fake: CacheFakeTmemd,
                                                                disk: Path) -> None:
    first = start(tmp_path, fake, disk)
    old_pool = fake.pool_of(0)
    first.agent.server.stop()  # dies without giving the pool back
    first.thread.join(10)
    first.agent.link.close()  # so the pool is not given back at close
    first.agent.close()
    assert fake.pool_of(0) == old_pool
    assert (tmp_path / f"cache-{embedded.NAME}.pools").exists()  # beside the fallback
    second = start(tmp_path, fake, disk)
    try:
        wait_for(lambda: (wire.Op.DESTROY_POOL, old_pool[0]) in fake.ops)
        assert len(fake.pool_of(0)) == 1  # the new one (the fake may reuse the id)
        assert len(fake.pool_of(PERSIST)) == 1  # the swap pool resumed
    finally:
        second.stop()


def test_without_cache_disk_the_agent_serves_swap_alone(tmp_path: Path,
                                                       fake: CacheFakeTmemd) -> None:
    agent = AgentThread(tmp_path, fake.path)
    try:
        assert "cache" not in agent.status() and fake.pool_of(0) == []
        assert "cache" not in json.loads((tmp_path / "run" / "ready").read_text())
    finally:
        agent.stop()


def test_the_cache_disk_defaults_to_the_kernel_command_line(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"console=ttyS0 {embedded.CMDLINE_WORD}=/dev/vdb tmem.vm=x\n")
    assert service.kernel_word(embedded.CMDLINE_WORD, str(cmdline)) == "/dev/vdb"
    assert service.kernel_word("tmem.other", str(cmdline)) is None
    assert service.kernel_word("tmem.vm", str(tmp_path / "absent")) is None
