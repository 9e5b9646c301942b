"""Graceful restart: SIGTERM writes the state file, a new daemon restores it, and a resuming
agent gets every persistent page back byte for byte."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from support.daemon import running_daemon

from tmem_agent.channel import wire
from tmem_agent.channel.transport import RemoteError

pytestmark = pytest.mark.real

PERSIST = 1


def corpus(seed: int, count: int) -> list[bytes]:
    """Text-like, zero and byte-filled pages, all storable in a persistent pool."""
    pages = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            pages.append(bytes(wire.PAGE_SIZE))
        elif kind == 1:
            pages.append(bytes([i % 256]) * wire.PAGE_SIZE)
        else:
            words = b" ".join(b"word%d" % ((seed * 7919 + i * j) % 1000) for j in range(900))
            pages.append(words[: wire.PAGE_SIZE])
    return pages


def test_sigterm_saves_and_a_new_daemon_restores_every_persistent_page() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tmemd-"))
    state = str(workdir / "state.bin")
    keys = [((i % 3, i // 3, 7), i) for i in range(200)]
    pages = {vm: corpus(n, len(keys)) for n, vm in enumerate(("alpha", "beta"))}
    try:
        with running_daemon("--state-file", state, workdir=workdir) as daemon:
            pools: dict[str, list[int]] = {}
            for vm in ("alpha", "beta"):
                with daemon.transport() as agent:
                    agent.hello(vm, vm.encode().ljust(16, b"."), os.urandom(16))
                    eph = agent.new_pool(0)
                    first, second = agent.new_pool(PERSIST), agent.new_pool(PERSIST)
                    assert all(agent.put_batch(first, keys, pages[vm]))
                    assert all(agent.put_batch(second, keys[:50], pages[vm][::-1][:50]))
                    agent.put(eph, (1, 1, 1), 1, pages[vm][5])
                    pools[vm] = [eph, first, second]
                    before = agent.hello_reply.instance_id  # type: ignore[union-attr]
            with daemon.transport() as connected:  # a guest still attached at SIGTERM
                connected.hello("gamma", b"g" * 16, os.urandom(16))
                assert daemon.stop() == 0
            assert os.path.getsize(state) > 250 * wire.PAGE_SIZE
            daemon.start()
            with daemon.transport() as agent:
                reply = agent.hello("alpha", b"alpha" + b"." * 11, os.urandom(16))
                assert reply.status is wire.HelloStatus.RESUMED
                assert reply.instance_id != before
                assert sorted(p.pool_id for p in reply.pools) == sorted(pools["alpha"])
                eph, first, second = pools["alpha"]
                assert agent.get_batch(first, keys) == pages["alpha"]
                assert agent.get_batch(second, keys[:50]) == pages["alpha"][::-1][:50]
                assert agent.get(eph, (1, 1, 1), 1) is None  # ephemeral pages are not saved
            with daemon.transport() as agent:  # beta rebooted meanwhile: nothing comes back
                reply = agent.hello("beta", b"new boot id....!", os.urandom(16))
                assert reply.status is wire.HelloStatus.FRESH and reply.pools == []
                with pytest.raises(RemoteError, match="NO_SUCH_POOL"):
                    agent.get(pools["beta"][1], keys[0][0], keys[0][1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_corrupt_state_file_is_refused_with_a_clear_error() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tmemd-"))
    state = workdir / "state.bin"
    state.write_bytes(b"TMEMSTAT" + os.urandom(100))
    try:
        with pytest.raises(Exception, match="exited") as info:
            with running_daemon("--state-file", str(state), workdir=workdir):
                pass
        assert "tmemd: error: state file" in str(info.value)
        assert "Traceback" not in str(info.value)
        assert state.read_bytes().startswith(b"TMEMSTAT")  # left as it was
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_crash_after_a_restore_does_not_bring_stale_pages_back() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tmemd-"))
    state = str(workdir / "state.bin")
    old, new = corpus(1, 2)[1], corpus(2, 2)[1]
    boot = b"d" * 16
    try:
        with running_daemon("--state-file", state, workdir=workdir) as daemon:
            with daemon.transport() as agent:
                agent.hello("delta", boot, os.urandom(16))
                pool = agent.new_pool(PERSIST)
                assert agent.put(pool, (1, 2, 3), 0, old)
            assert daemon.stop() == 0
            daemon.start()  # restores the file, then retires it
            assert not os.path.exists(state) and os.path.exists(state + ".restored")
            with daemon.transport() as agent:
                assert agent.hello("delta", boot, os.urandom(16)).status is wire.HelloStatus.RESUMED
                assert agent.get(pool, (1, 2, 3), 0) == old
                assert agent.put(pool, (1, 2, 3), 0, new)
            daemon.crash()  # nothing saved: the guest must not be handed the old page
            daemon.start()
            with daemon.transport() as agent:
                reply = agent.hello("delta", boot, os.urandom(16))
                assert reply.status is wire.HelloStatus.FRESH and reply.pools == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
