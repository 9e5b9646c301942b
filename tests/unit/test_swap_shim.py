"""The swap shim on the host: the agent's NBD server driven by a test NBD client over a unix
socket, with tmemd replaced by a small fake daemon that speaks the real wire protocol (so the
real transport is used) and records every request."""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nbd_testclient import (
    CMD_READ,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    EINVAL,
    EIO,
    ENOSPC,
    OPT_ABORT,
    OPT_INFO,
    OPT_LIST,
    REP_ACK,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_SERVER,
    NbdClient,
    NbdError,
)

from tmem_agent import cli, service
from tmem_agent.channel import wire
from tmem_agent.swap.locmap import FALLBACK, TMEM
from tmem_agent.swap.shim import swap_key

PAGE = 4096
SIZE = 16 << 20


def page(tag: int, fill: int | None = None) -> bytes:
    """A distinct, compressible page; ``fill`` sets its first byte (the fake refuses 0xFF)."""
    body = (f"page {tag:08d} ".encode() * 300)[:PAGE]
    return body if fill is None else bytes([fill]) + body[1:]


class FakeTmemd:
    """Enough of tmemd for the shim: hello (resume by boot id), pools, batches, stats."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.store: dict[tuple[int, wire.Oid, int], bytes] = {}
        self.pools: dict[int, int] = {}
        self.boot: bytes | None = None
        self.ops: list[tuple[int, int]] = []  # (op, pages) of every request
        self.refuse: Callable[[bytes], bool] = lambda data: data[0] == 0xFF
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def count(self, op: int) -> list[int]:
        return [n for o, n in self.ops if o == op]

    def crash(self) -> None:
        """Lose every page and pool; connections break; the next hello is fresh."""
        with self.lock:
            self.store.clear()
            self.pools.clear()
            self.boot = None
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its thread
            self.conns.clear()

    def close(self) -> None:
        self.crash()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = wire.FrameDecoder()
        with conn:
            while True:
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    return
                for event in decoder.feed(data):
                    assert isinstance(event, wire.Frame), event
                    with self.lock:
                        reply = self._handle(event.op, bytes(event.payload))
                    try:
                        conn.sendall(wire.encode_frame(event.op, event.request_id, reply,
                                                       wire.REPLY))
                    except OSError:
                        return

    def _handle(self, op: int, payload: bytes) -> bytes:
        if op == wire.Op.HELLO:
            hello = wire.Hello.unpack(payload)
            resumed = hello.boot_id == self.boot
            if not resumed:
                self.store.clear()
                self.pools.clear()
                self.boot = hello.boot_id
            status = wire.HelloStatus.RESUMED if resumed else wire.HelloStatus.FRESH
            pools = [wire.PoolInfo(p, f) for p, f in self.pools.items()]
            return wire.HelloReply(status, 1, bytes(16), "fake", pools=pools).pack()
        if op == wire.Op.NEW_POOL:
            flags, _, _ = wire.parse_new_pool(payload)
            pool = max(self.pools, default=-1) + 1
            self.pools[pool] = flags
            return wire.u32(pool)
        if op == wire.Op.STATS:
            return wire.json_payload({"client": {"pages": len(self.store)}})
        with_pages = op == wire.Op.PUT_BATCH
        pool, keys, pages = wire.parse_batch(payload, with_pages)
        self.ops.append((op, len(keys)))
        handles = [(pool, oid, index) for oid, index in keys]
        if op == wire.Op.PUT_BATCH:
            results = []
            for handle, data in zip(handles, pages, strict=True):
                if self.refuse(data):
                    self.store.pop(handle, None)  # a refused put leaves the handle empty
                    results.append(False)
                else:
                    self.store[handle] = data
                    results.append(True)
            return wire.flags_reply(results)
        if op == wire.Op.GET_BATCH:
            return wire.get_batch_reply([self.store.get(h) for h in handles])
        if op == wire.Op.FLUSH_BATCH:
            return wire.flags_reply([self.store.pop(h, None) is not None for h in handles])
        raise AssertionError(f"unexpected op {op}")


class AgentThread:
    """``tmem-agent run --attach none`` in a thread of the test process."""

    def __init__(self, tmp: Path, tmem_socket: str, **options: object) -> None:
        parser = argparse.ArgumentParser()
        service.add_arguments(parser)
        argv = ["--attach", "none", "--no-harden", "--tmem-socket", tmem_socket,
                "--run-dir", str(tmp / "run"), "--fallback", str(tmp / "fallback"),
                "--swap-size", str(SIZE), "--slots", "96"]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.args = parser.parse_args(argv)
        self.nbd_path = str(tmp / "run" / "nbd.sock")
        self.status_path = str(tmp / "run" / "status.sock")
        self.agent = service.Agent(self.args)
        self.agent.link.retry_every = 0.2
        self.agent.start()
        self.thread = threading.Thread(target=self.agent.server.run, daemon=True)
        self.thread.start()

    def client(self) -> NbdClient:
        nbd = NbdClient(self.nbd_path)
        nbd.go("swap")
        return nbd

    def status(self) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.status_path)
            data: dict[str, object] = json.loads(sock.makefile().read())
            return data

    def stop(self) -> None:
        self.agent.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.agent.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeTmemd]:
    daemon = FakeTmemd(str(tmp_path / "tmemd.sock"))
    yield daemon
    daemon.close()


@pytest.fixture
def agent(tmp_path: Path, fake: FakeTmemd) -> Iterator[AgentThread]:
    running = AgentThread(tmp_path, fake.path)
    yield running
    running.stop()


def counters(status: dict[str, object]) -> dict[str, int]:
    found = status["counters"]
    assert isinstance(found, dict)
    return found


# ----- handshake ---------------------------------------------------------------------------
def test_handshake_go_list_info_abort_and_unknown_options(agent: AgentThread) -> None:
    nbd = NbdClient(agent.nbd_path)
    nbd.option(OPT_LIST)
    listed = nbd.option_reply()
    assert listed.kind == REP_SERVER and listed.data[4:] == b"swap"
    assert nbd.option_reply().kind == REP_ACK
    assert nbd.info_request(OPT_INFO, "nope")[-1].kind == REP_ERR_UNKNOWN
    info = nbd.info_request(OPT_INFO, "swap")
    assert info[-1].kind == REP_ACK and len(info) == 3  # export, block size, ack
    nbd.option(99)
    assert nbd.option_reply().kind == REP_ERR_UNSUP
    nbd.go("swap")
    assert nbd.size == SIZE and nbd.flags & (1 | 4 | 32 | 64) == 1 | 4 | 32 | 64
    assert nbd.read(0, PAGE) == bytes(PAGE)
    nbd.close()
    aborted = NbdClient(agent.nbd_path)
    aborted.option(OPT_ABORT)
    assert aborted.option_reply().kind == REP_ACK
    aborted.close()
    old = NbdClient(agent.nbd_path)
    old.export_name("swap")
    assert old.size == SIZE and old.read(PAGE, PAGE) == bytes(PAGE)
    old.disconnect()


# ----- data path ---------------------------------------------------------------------------
def test_write_read_trim_flush_round_trips(agent: AgentThread, fake: FakeTmemd) -> None:
    nbd = agent.client()
    data = b"".join(page(i) for i in range(8))
    nbd.write(5 * PAGE, data)
    assert nbd.read(5 * PAGE, 8 * PAGE) == data
    assert nbd.read(3 * PAGE, 4 * PAGE) == bytes(2 * PAGE) + data[: 2 * PAGE]
    oid, index = swap_key(5)
    assert fake.store[(0, (oid, 0, 0), index)] == data[:PAGE]  # frontswap's handle
    nbd.trim(6 * PAGE, 2 * PAGE)
    assert nbd.read(5 * PAGE, 4 * PAGE) == data[:PAGE] + bytes(2 * PAGE) + data[3 * PAGE:
                                                                                4 * PAGE]
    assert len(fake.store) == 6  # the trimmed pages were flushed from tmem too
    nbd.call(CMD_WRITE_ZEROES, 5 * PAGE, PAGE)
    assert nbd.read(5 * PAGE, PAGE) == bytes(PAGE) and len(fake.store) == 5
    nbd.flush()
    nbd.write(SIZE - PAGE, page(99))
    assert nbd.read(SIZE - PAGE, PAGE) == page(99)
    nbd.disconnect()
    status = agent.status()
    assert counters(status)["nbd_writes"] == 2 and counters(status)["io_errors"] == 0


def test_bad_requests_get_errors_and_the_connection_goes_on(agent: AgentThread) -> None:
    nbd = agent.client()
    for cmd, offset, length, error in ((CMD_READ, 100, PAGE, EINVAL),
                                       (CMD_READ, SIZE, PAGE, EINVAL),
                                       (CMD_WRITE, SIZE, PAGE, ENOSPC),
                                       (CMD_WRITE, 0, 100, EINVAL),
                                       (9, 0, 0, EINVAL)):
        data = bytes(length) if cmd == CMD_WRITE else b""
        with pytest.raises(NbdError) as caught:
            nbd.call(cmd, offset, length, data)
        assert caught.value.error == error
    nbd.write(0, page(1))
    assert nbd.read(0, PAGE) == page(1)
    nbd.close()


def test_a_readahead_read_is_one_batched_get(agent: AgentThread, fake: FakeTmemd) -> None:
    nbd = agent.client()
    nbd.write(64 * PAGE, b"".join(page(i) for i in range(32)))
    fake.ops.clear()
    assert nbd.read(64 * PAGE, 8 * PAGE) == b"".join(page(i) for i in range(8))
    assert nbd.read(72 * PAGE, 24 * PAGE) == b"".join(page(i) for i in range(8, 32))
    assert fake.ops == [(wire.Op.GET_BATCH, 8), (wire.Op.GET_BATCH, 24)]
    nbd.close()


def test_pipelined_writes_share_batches_and_complete_out_of_order(agent: AgentThread,
                                                                  fake: FakeTmemd) -> None:
    nbd = agent.client()
    cookies = [nbd.send(CMD_WRITE, i * PAGE, PAGE, page(i)) for i in range(64)]
    assert all(error == 0 for error, _ in nbd.replies(cookies).values())
    puts = fake.count(wire.Op.PUT_BATCH)
    assert sum(puts) == 64 and len(puts) < 64  # gathered, not one round trip per page
    reads = [nbd.send(CMD_READ, i * PAGE, PAGE) for i in range(64)]
    got = nbd.replies(reads)
    assert [got[c][1] for c in reads] == [page(i) for i in range(64)]
    nbd.close()


def test_requests_beyond_the_slots_wait_and_none_is_lost(agent: AgentThread) -> None:
    """Far more pipelined data than the agent's 96 page slots, writes and reads mixed: the
    agent reads requests ahead in chunks, blocks when slots run out and must go on with what
    it already read when replies free them (no poll will tell it)."""
    nbd = agent.client()
    pages = {i: page(i) for i in range(512)}
    writes = [nbd.send(CMD_WRITE, i * PAGE, 8 * PAGE, b"".join(pages[i + j] for j in range(8)))
              for i in range(0, 512, 8)]
    reads = [nbd.send(CMD_READ, i * PAGE, 3 * PAGE) for i in range(0, 509, 7)]
    got = nbd.replies(writes + reads)
    assert all(got[c][0] == 0 for c in writes + reads)
    again = nbd.replies([nbd.send(CMD_READ, i * PAGE, 16 * PAGE) for i in range(0, 512, 16)])
    data = b"".join(body for _, (_, body) in sorted(again.items()))
    assert data == b"".join(pages[i] for i in range(512))
    nbd.close()


# ----- fallback ----------------------------------------------------------------------------
def test_refused_pages_go_to_the_fallback_file_and_come_back(agent: AgentThread,
                                                             fake: FakeTmemd) -> None:
    nbd = agent.client()
    pages = [page(i, 0xFF if i % 3 == 0 else None) for i in range(30)]
    nbd.write(0, b"".join(pages))
    assert nbd.read(0, 30 * PAGE) == b"".join(pages)
    status = agent.status()
    assert status["refusals"] == {"refused": 10, "disconnected": 0, "error": 0}
    assert counters(status)["fallback_writes"] == 10 == counters(status)["fallback_reads"]
    assert status["map"] == {"empty": SIZE // PAGE - 30, "tmem": 20, "fallback": 10, "lost": 0}
    assert len(fake.store) == 20
    nbd.trim(0, 30 * PAGE)  # flushes both copies: the map forgets the fallback ones too
    assert nbd.read(0, 30 * PAGE) == bytes(30 * PAGE) and not fake.store
    nbd.close()


def test_without_tmemd_every_page_goes_to_the_fallback(tmp_path: Path) -> None:
    running = AgentThread(tmp_path, str(tmp_path / "nobody.sock"))
    try:
        nbd = running.client()
        nbd.write(0, page(1) + page(2))
        assert nbd.read(0, 2 * PAGE) == page(1) + page(2)
        status = running.status()
        assert status["refusals"] == {"refused": 0, "disconnected": 2, "error": 0}
        assert status["tmem_connected"] is False
        nbd.close()
    finally:
        running.stop()


# ----- restarts and losses -----------------------------------------------------------------
def test_the_location_map_survives_an_agent_restart(tmp_path: Path, fake: FakeTmemd) -> None:
    first = AgentThread(tmp_path, fake.path)
    pages = [page(i, 0xFF if i % 4 == 0 else None) for i in range(40)]
    try:
        nbd = first.client()
        nbd.write(0, b"".join(pages))
        nbd.close()
    finally:
        first.stop()
    second = AgentThread(tmp_path, fake.path)
    try:
        assert second.agent.link.hello is not None
        assert second.agent.link.hello.status == wire.HelloStatus.RESUMED
        assert second.agent.locmap.get(0) == FALLBACK and second.agent.locmap.get(1) == TMEM
        nbd = second.client()
        assert nbd.read(0, 40 * PAGE) == b"".join(pages)
        nbd.close()
    finally:
        second.stop()


def test_a_tmemd_crash_gives_io_errors_never_other_data(agent: AgentThread,
                                                        fake: FakeTmemd) -> None:
    nbd = agent.client()
    nbd.write(0, page(1, 0xFF))  # refused: the fallback holds this first version
    nbd.write(0, page(2))  # stored in tmem: now the fallback copy is stale
    nbd.write(PAGE, page(3, 0xFF))  # only ever in the fallback
    nbd.write(2 * PAGE, page(4))
    assert nbd.read(0, PAGE) == page(2)
    fake.crash()
    deadline = 50
    while deadline and not (agent.agent.link.connected and agent.agent.link.hello is not None
                            and agent.agent.link.hello.status == wire.HelloStatus.FRESH):
        threading.Event().wait(0.1)
        deadline -= 1
    for offset, length in ((0, PAGE), (0, 3 * PAGE), (2 * PAGE, PAGE)):
        with pytest.raises(NbdError) as caught:
            nbd.read(offset, length)
        assert caught.value.error == EIO
    assert nbd.read(PAGE, PAGE) == page(3, 0xFF)  # the fallback page is still good
    nbd.write(0, page(5))  # a new write makes the page readable again
    assert nbd.read(0, PAGE) == page(5)
    status = agent.status()
    assert counters(status)["lost_pages"] == 2 and counters(status)["io_errors"] >= 3
    assert status["map"]["lost"] == 1  # type: ignore[index]
    nbd.close()


def test_reads_wait_for_a_reconnect_and_writes_fall_back_meanwhile(tmp_path: Path) -> None:
    path = str(tmp_path / "later.sock")
    running = AgentThread(tmp_path, path)
    daemon: FakeTmemd | None = None
    try:
        nbd = running.client()
        nbd.write(0, page(1))  # tmemd absent: fallback
        daemon = FakeTmemd(path)
        deadline = 50
        while not running.agent.link.connected and deadline:
            threading.Event().wait(0.1)
            deadline -= 1
        assert running.agent.link.connected
        nbd.write(PAGE, page(2))
        assert nbd.read(0, 2 * PAGE) == page(1) + page(2)
        assert len(daemon.store) == 1
        nbd.close()
    finally:
        running.stop()
        if daemon is not None:
            daemon.close()


# ----- status ------------------------------------------------------------------------------
def test_status_command_prints_the_counters(agent: AgentThread,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    nbd = agent.client()
    nbd.write(0, page(1))
    nbd.read(0, PAGE)
    nbd.close()
    assert cli.main(["status", "--socket", agent.status_path]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["counters"]["puts"] == 1 and shown["counters"]["gets"] == 1
    assert shown["latency_us"]["tmem_get_batch"]["count"] == 1
    assert shown["batch_pages"]["put"]["count"] == 1 and shown["phase"] == "ready"
    assert cli.main(["status", "--socket", os.path.join(str(agent.args.run_dir), "x")]) == 1
    assert "no agent answers" in capsys.readouterr().err


def test_a_page_tmem_no_longer_has_fails_the_read(agent: AgentThread, fake: FakeTmemd) -> None:
    nbd = agent.client()
    nbd.write(0, page(1) + page(2) + page(3))
    oid, index = swap_key(1)
    del fake.store[(0, (oid, 0, 0), index)]  # tmemd lost one page behind the agent's back
    with pytest.raises(NbdError) as caught:
        nbd.read(0, 3 * PAGE)
    assert caught.value.error == EIO
    assert nbd.read(0, PAGE) == page(1) and nbd.read(2 * PAGE, PAGE) == page(3)
    with pytest.raises(NbdError):  # marked lost: fails at once from now on
        nbd.read(PAGE, PAGE)
    assert agent.status()["map"]["lost"] == 1  # type: ignore[index]
    nbd.close()


def test_a_second_agent_on_the_same_run_directory_is_refused(agent: AgentThread) -> None:
    with pytest.raises(service.AgentRunning, match=f"pid {os.getpid()}"):
        service.Agent(agent.args)
