"""Every op, batching, pipelining and the handshake rules against a live ``tmemd serve``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from support.daemon import DaemonUnderTest, running_daemon

from tmem_agent.channel import wire
from tmem_agent.channel.transport import ConnectionLost, RemoteError, Transport

pytestmark = pytest.mark.real

PERSIST, EPHEMERAL = 1, 0
TEXT = (b"tmem keeps evicted pages compressed in host memory. " * 80)[: wire.PAGE_SIZE]


def page(n: int) -> bytes:
    """A distinct, compressible page."""
    return (n.to_bytes(4, "little") * 8 + TEXT)[: wire.PAGE_SIZE]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonUnderTest]:
    with running_daemon("--memory-limit", "64M") as proc:
        yield proc


def connect(daemon: DaemonUnderTest, vm: str, boot: bytes = b"B" * 16) -> Transport:
    transport = daemon.transport()
    transport.hello(vm, boot, os.urandom(16))
    return transport


def test_every_single_page_op_round_trips(daemon: DaemonUnderTest) -> None:
    with connect(daemon, "ops") as agent:
        assert agent.ping(b"echo") == b"echo"
        pers = agent.new_pool(PERSIST)
        eph = agent.new_pool(EPHEMERAL)
        assert pers != eph
        oid = (7, 2**64 - 1, 0)
        assert agent.put(pers, oid, 0, page(0)) and agent.put(pers, oid, 1, page(1))
        assert agent.get(pers, oid, 0) == page(0)
        assert agent.get(pers, oid, 0) == page(0)  # persistent gets keep the page
        assert agent.flush_page(pers, oid, 0) is True
        assert agent.flush_page(pers, oid, 0) is False
        assert agent.get(pers, oid, 0) is None
        assert agent.flush_object(pers, oid) == 1
        assert agent.put(eph, oid, 5, page(5))
        assert agent.get(eph, oid, 5) == page(5)
        assert agent.get(eph, oid, 5) is None  # private ephemeral gets are exclusive
        agent.put(pers, (1, 1, 1), 1, page(9))
        stats = agent.stats()
        assert stats["session"]["vm"] == "ops" and stats["client"]["pages"] >= 1
        assert agent.destroy_pool(pers) == 1
        with pytest.raises(RemoteError, match="NO_SUCH_POOL"):
            agent.get(pers, oid, 1)


def test_batched_put_get_and_flush(daemon: DaemonUnderTest) -> None:
    with connect(daemon, "batch") as agent:
        pool = agent.new_pool(PERSIST)
        keys = [((i // 16, 0, 0), i) for i in range(wire.MAX_BATCH)]
        pages = [page(i) for i in range(wire.MAX_BATCH)]
        pages[3] = os.urandom(wire.PAGE_SIZE)  # compresses poorly: refused by a persistent pool
        stored = agent.put_batch(pool, keys, pages)
        assert stored == [i != 3 for i in range(wire.MAX_BATCH)]
        got = agent.get_batch(pool, keys)
        assert got == [p if i != 3 else None for i, p in enumerate(pages)]
        assert agent.flush_batch(pool, keys[:10]) == [i != 3 for i in range(10)]
        assert agent.get_batch(pool, keys[:12])[9:] == [None, pages[10], pages[11]]
        with pytest.raises(RemoteError, match="BAD_REQUEST"):
            agent.call(wire.Op.PUT_BATCH, wire.batch_request(pool, keys[:2], pages[:2])[:-1])


def test_pipelined_requests_answered_by_id_in_any_order(daemon: DaemonUnderTest) -> None:
    with connect(daemon, "pipeline") as agent:
        pool = agent.new_pool(PERSIST)
        puts = [agent.submit(wire.Op.PUT, wire.key_request(pool, (1, 2, 3), i, page(i)))
                for i in range(200)]
        gets = [agent.submit(wire.Op.GET, wire.key_request(pool, (1, 2, 3), i))
                for i in range(200)]
        assert agent.in_flight == 400
        for i, rid in reversed(list(enumerate(gets))):
            assert agent.result(rid) == page(i)
        assert all(agent.result(rid) == b"\x01" for rid in puts)


def test_ops_before_hello_and_unknown_ops_get_error_replies(daemon: DaemonUnderTest) -> None:
    with daemon.raw_socket() as sock:
        decoder = wire.FrameDecoder()
        sock.sendall(wire.encode_frame(wire.Op.GET, 41, wire.key_request(0, (0, 0, 0), 0)))
        sock.sendall(wire.encode_frame(99, 42))
        sock.sendall(wire.encode_frame(wire.Op.PING, 43, b"x"))
        replies = read_replies(sock, decoder, 3)
        assert [(f.request_id, error_code(f)) for f in replies] == [
            (41, wire.ErrorCode.NOT_READY), (42, wire.ErrorCode.UNKNOWN_OP), (43, None)]


def read_replies(sock: object, decoder: wire.FrameDecoder, count: int) -> list[wire.Frame]:
    import socket

    assert isinstance(sock, socket.socket)
    sock.settimeout(10)
    frames: list[wire.Frame] = []
    while len(frames) < count:
        data = sock.recv(1 << 20)
        if not data:
            break
        frames += [e for e in decoder.feed(data) if isinstance(e, wire.Frame)]
    return frames


def error_code(frame: wire.Frame) -> wire.ErrorCode | None:
    if not frame.flags & wire.Flag.ERROR:
        return None
    return wire.ErrorCode(wire.decode_error(frame.payload)[0])


# ----- the handshake: resume, reboot, takeover, daemon restarts ---------------------------


def test_agent_restart_with_same_boot_id_resumes_pools_and_pages(daemon: DaemonUnderTest) -> None:
    with connect(daemon, "resume", b"1" * 16) as first:
        pool = first.new_pool(PERSIST)
        assert first.put(pool, (1, 0, 0), 0, page(1))
    with daemon.transport() as second:
        reply = second.hello("resume", b"1" * 16, os.urandom(16))
        assert reply.status is wire.HelloStatus.RESUMED
        assert [(p.pool_id, p.flags) for p in reply.pools] == [(pool, PERSIST)]
        assert second.get(pool, (1, 0, 0), 0) == page(1)


def test_reboot_drops_the_old_client_and_its_pages(daemon: DaemonUnderTest) -> None:
    with connect(daemon, "reboot", b"1" * 16) as first:
        pool = first.new_pool(PERSIST)
        first.put(pool, (1, 0, 0), 0, page(1))
        old_client = first.hello_reply.client_id  # type: ignore[union-attr]
    with daemon.transport() as second:
        reply = second.hello("reboot", b"2" * 16, os.urandom(16))
        assert reply.status is wire.HelloStatus.FRESH and reply.pools == []
        assert reply.client_id != old_client
        with pytest.raises(RemoteError, match="NO_SUCH_POOL"):
            second.get(pool, (1, 0, 0), 0)


def test_hello_mid_stream_rebinds_the_same_connection(daemon: DaemonUnderTest) -> None:
    with connect(daemon, "midstream", b"1" * 16) as agent:
        pool = agent.new_pool(PERSIST)
        agent.put(pool, (1, 0, 0), 0, page(1))
        rid = agent.submit(wire.Op.HELLO, wire.Hello("midstream", b"1" * 16, b"s" * 16).pack())
        assert wire.HelloReply.unpack(agent.result(rid)).status is wire.HelloStatus.RESUMED
        assert agent.get(pool, (1, 0, 0), 0) == page(1)
        rid = agent.submit(wire.Op.HELLO, wire.Hello("midstream", b"3" * 16, b"s" * 16).pack())
        assert wire.HelloReply.unpack(agent.result(rid)).status is wire.HelloStatus.FRESH
        with pytest.raises(RemoteError, match="NO_SUCH_POOL"):
            agent.get(pool, (1, 0, 0), 0)


def test_newer_connection_for_a_vm_supersedes_the_older(daemon: DaemonUnderTest) -> None:
    with connect(daemon, "takeover") as old, connect(daemon, "takeover") as new:
        assert new.hello_reply.status is wire.HelloStatus.RESUMED  # type: ignore[union-attr]
        with pytest.raises((ConnectionLost, RemoteError)):
            old.ping()
            old.ping()
        assert new.ping(b"ok") == b"ok"


def test_another_boot_id_on_a_new_connection_cannot_take_a_live_vms_name(
    daemon: DaemonUnderTest,
) -> None:
    with daemon.transport() as intruder:
        with connect(daemon, "owned", b"1" * 16) as owner:
            pool = owner.new_pool(PERSIST)
            assert owner.put(pool, (1, 0, 0), 0, page(1))
            with pytest.raises(RemoteError, match="VM_NAME_IN_USE"):
                intruder.hello("owned", b"2" * 16, os.urandom(16))
            assert owner.get(pool, (1, 0, 0), 0) == page(1)  # still served, data intact
        # once the owner's connection is gone, another boot id is a reboot of that VM
        deadline = time.monotonic() + 5
        while True:
            try:
                reply = intruder.hello("owned", b"2" * 16, os.urandom(16))
                break
            except RemoteError:  # the daemon may not have seen the owner's close yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert reply.status is wire.HelloStatus.FRESH and reply.pools == []


def test_a_refused_hello_leaves_the_connection_bound_to_its_own_vm(
    daemon: DaemonUnderTest,
) -> None:
    with connect(daemon, "taken", b"1" * 16), connect(daemon, "bystander") as other:
        pool = other.new_pool(PERSIST)
        assert other.put(pool, (1, 0, 0), 0, page(7))
        rid = other.submit(wire.Op.HELLO, wire.Hello("taken", b"2" * 16, b"s" * 16).pack())
        with pytest.raises(RemoteError, match="VM_NAME_IN_USE"):
            other.result(rid)
        assert other.get(pool, (1, 0, 0), 0) == page(7)
        session = other.stats()["session"]
        assert session["vm"] == "bystander" and session["connected"] is True


def test_after_a_daemon_crash_a_resuming_agent_is_told_its_data_is_gone() -> None:
    with running_daemon() as daemon:
        with connect(daemon, "crash", b"1" * 16) as agent:
            pool = agent.new_pool(PERSIST)
            agent.put(pool, (1, 0, 0), 0, page(1))
            before = agent.hello_reply.instance_id  # type: ignore[union-attr]
        daemon.crash()
        daemon.start()
        with daemon.transport() as agent:
            reply = agent.hello("crash", b"1" * 16, os.urandom(16))
            assert reply.status is wire.HelloStatus.FRESH and reply.pools == []
            assert reply.instance_id != before
            with pytest.raises(RemoteError, match="NO_SUCH_POOL"):
                agent.get(pool, (1, 0, 0), 0)


def test_two_vms_with_the_same_handles_see_only_their_own_pages(daemon: DaemonUnderTest) -> None:
    with connect(daemon, "vm-a") as a, connect(daemon, "vm-b") as b:
        pool_a, pool_b = a.new_pool(PERSIST), b.new_pool(PERSIST)
        assert pool_a == pool_b  # each client numbers its own pools
        assert a.put(pool_a, (1, 1, 1), 1, page(100)) and b.put(pool_b, (1, 1, 1), 1, page(200))
        assert a.get(pool_a, (1, 1, 1), 1) == page(100)
        assert b.get(pool_b, (1, 1, 1), 1) == page(200)
        assert a.hello_reply.client_id != b.hello_reply.client_id  # type: ignore[union-attr]


def test_socket_path_in_use_or_not_a_socket_is_a_clear_error(daemon: DaemonUnderTest) -> None:
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    def serve(socket_path: str, control: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tmemd.cli", "serve", "--socket",
                               socket_path, "--control", control],
                              capture_output=True, text=True, timeout=60)

    with tempfile.TemporaryDirectory(prefix="tmemd-") as scratch:
        busy = serve(daemon.socket, f"{scratch}/c.sock")
        assert busy.returncode == 1 and "another server is listening" in busy.stderr
        plain = Path(scratch, "plain")
        plain.write_text("keep me")
        refused = serve(str(plain), f"{scratch}/c2.sock")
        assert refused.returncode == 1 and "is not a socket" in refused.stderr
        assert plain.read_text() == "keep me"
    with connect(daemon, "after") as agent:  # the running daemon was not disturbed
        assert agent.ping(b"still here") == b"still here"
