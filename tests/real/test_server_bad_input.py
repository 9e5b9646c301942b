"""Bad input against a live daemon: the bad client gets error frames or a resync, and the
daemon keeps serving a good client whose data stays intact."""

from __future__ import annotations

import os
import socket
import time
import zlib
from collections.abc import Iterator

import pytest
from support.daemon import DaemonUnderTest, running_daemon

from tmem_agent.channel import wire
from tmem_agent.channel.transport import Transport

pytestmark = pytest.mark.real

STALL_TIMEOUT = 0.5
ErrorCode = wire.ErrorCode
Good = tuple[Transport, int]
KEYS = [((i, 0, 0), i) for i in range(wire.MAX_BATCH)]


def page(n: int) -> bytes:
    return (n.to_bytes(4, "little") * 16 + b"good client data " * 250)[: wire.PAGE_SIZE]


PAGES = [page(i) for i in range(wire.MAX_BATCH)]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonUnderTest]:
    with running_daemon("--memory-limit", "64M", "--stall-timeout", str(STALL_TIMEOUT)) as proc:
        yield proc


@pytest.fixture(scope="module")
def good(daemon: DaemonUnderTest) -> Iterator[tuple[Transport, int]]:
    """A well-behaved agent that stored a batch of pages before the bad client starts."""
    with daemon.transport() as agent:
        agent.hello("good", b"g" * 16, os.urandom(16))
        pool = agent.new_pool(1)
        assert all(agent.put_batch(pool, KEYS, PAGES))
        yield agent, pool


def assert_good_client_intact(good: Good) -> None:
    agent, pool = good
    assert agent.get_batch(pool, KEYS) == PAGES


class RawClient:
    """A misbehaving agent: raw bytes out, decoded replies in."""

    def __init__(self, daemon: DaemonUnderTest) -> None:
        self.sock = daemon.raw_socket()
        self.sock.settimeout(10)
        self.decoder = wire.FrameDecoder()
        self.replies: list[wire.Frame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self) -> None:
        self.send(wire.encode_frame(wire.Op.HELLO, 1, wire.Hello(
            "bad", b"b" * 16, os.urandom(16)).pack()))
        self.wait_for(1)

    def wait_for(self, request_id: int) -> wire.Frame:
        while True:
            for frame in self.replies:
                if frame.request_id == request_id:
                    return frame
            data = self.sock.recv(1 << 20)
            assert data, "the daemon closed the bad client's stream"
            self.replies += [e for e in self.decoder.feed(data) if isinstance(e, wire.Frame)]

    def errors(self) -> list[tuple[int, ErrorCode]]:
        return [(f.request_id, ErrorCode(wire.decode_error(f.payload)[0]))
                for f in self.replies if f.flags & wire.Flag.ERROR]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def bad(daemon: DaemonUnderTest) -> Iterator[RawClient]:
    client = RawClient(daemon)
    try:
        client.hello()
        yield client
    finally:
        client.close()


def header(version: int, op: int, rid: int, length: int, payload_crc: int = 0) -> bytes:
    body = wire._HEADER_BODY.pack(wire.MAGIC, version, op, 0, rid, length, payload_crc)
    return body + wire.U32.pack(zlib.crc32(body))


def ping(rid: int) -> bytes:
    return wire.encode_frame(wire.Op.PING, rid, b"alive")


def test_random_bytes_are_skipped_and_reported(good: Good, bad: RawClient) -> None:
    bad.send(os.urandom(256 << 10) + ping(50))
    assert bad.wait_for(50).payload == b"alive"
    assert (0, ErrorCode.GARBAGE) in bad.errors()
    assert_good_client_intact(good)


def test_wrong_crc_unknown_op_and_version_name_the_request(good: Good, bad: RawClient) -> None:
    corrupt = bytearray(wire.encode_frame(wire.Op.PUT, 60, wire.key_request(0, (1, 1, 1), 1,
                                                                            page(1))))
    corrupt[100] ^= 1
    bad.send(bytes(corrupt))
    bad.send(wire.encode_frame(200, 61))
    bad.send(header(9, wire.Op.PING, 62, 3, zlib.crc32(b"abc")) + b"abc")
    bad.send(wire.encode_frame(wire.Op.HELLO, 63, b"not a hello"))
    bad.send(ping(64))
    assert bad.wait_for(64).payload == b"alive"
    assert bad.errors() == [(60, ErrorCode.BAD_CRC), (61, ErrorCode.UNKNOWN_OP),
                            (62, ErrorCode.BAD_VERSION), (63, ErrorCode.BAD_REQUEST)]
    assert_good_client_intact(good)


def test_oversize_length_is_refused_and_the_stream_resyncs(good: Good, bad: RawClient) -> None:
    bad.send(header(wire.VERSION, wire.Op.PUT_BATCH, 70, 1 << 30) + os.urandom(5000) + ping(71))
    assert bad.wait_for(71).payload == b"alive"
    assert (70, ErrorCode.TOO_LARGE) in bad.errors()
    assert_good_client_intact(good)


def test_truncated_frame_swallowing_the_next_ones_then_resync(good: Good, bad: RawClient) -> None:
    put = wire.encode_frame(wire.Op.PUT, 80, wire.key_request(0, (2, 2, 2), 2, page(2)))
    bad.send(put[:1000] + b"".join(ping(rid) for rid in range(81, 300)))
    assert bad.wait_for(299).payload == b"alive"
    assert (80, ErrorCode.BAD_CRC) in bad.errors()
    assert_good_client_intact(good)


def test_stalled_partial_frame_times_out_with_its_request_id(good: Good, bad: RawClient) -> None:
    put = wire.encode_frame(wire.Op.PUT, 90, wire.key_request(0, (3, 3, 3), 3, page(3)))
    bad.send(put[:2000])
    time.sleep(STALL_TIMEOUT * 3)
    bad.send(ping(91))
    assert bad.wait_for(91).payload == b"alive"
    assert (90, ErrorCode.TIMEOUT) in bad.errors()
    assert_good_client_intact(good)


def test_client_that_stops_reading_does_not_stall_others_or_grow_the_daemon(
    daemon: DaemonUnderTest, good: Good, bad: RawClient
) -> None:
    bad.send(wire.encode_frame(wire.Op.NEW_POOL, 2, wire.new_pool_request(1)))
    pool = wire.parse_u32(bad.wait_for(2).payload)
    bad.send(wire.encode_frame(wire.Op.PUT_BATCH, 3, wire.batch_request(pool, KEYS, PAGES)))
    bad.wait_for(3)
    rss_before = daemon.rss_bytes()
    request = wire.encode_frame(wire.Op.GET_BATCH, 4, wire.batch_request(pool, KEYS))
    bad.sock.setblocking(False)
    sent, blocked_since = 0, None
    while blocked_since is None or time.monotonic() - blocked_since < 1.0:
        try:
            bad.sock.send(request)  # each asks for 1 MiB of replies, never read
            sent += 1
            blocked_since = None
        except BlockingIOError:
            blocked_since = blocked_since or time.monotonic()
            time.sleep(0.05)
    owed = sent * wire.MAX_BATCH * wire.PAGE_SIZE
    for _ in range(3):
        assert_good_client_intact(good)  # served while the bad client is stuck
    growth = daemon.rss_bytes() - rss_before
    assert owed > 40 << 20, f"only {sent} requests got in: the test proves nothing"
    print(f"stuck client: {sent} requests, {owed >> 20} MiB owed, daemon grew {growth >> 20} MiB")
    assert growth < 24 << 20, f"daemon grew {growth >> 20} MiB for {owed >> 20} MiB owed"
    bad.sock.setblocking(True)
    bad.close()
    assert_good_client_intact(good)
    assert daemon.alive()


def test_many_bad_connections_that_vanish_leave_the_daemon_serving(
    daemon: DaemonUnderTest, good: Good
) -> None:
    for n in range(20):
        with daemon.raw_socket() as sock:
            sock.sendall(os.urandom(n * 100) + wire.encode_frame(wire.Op.PUT, n, b"x" * n)[:30])
            sock.shutdown(socket.SHUT_WR)
    assert_good_client_intact(good)
    assert daemon.alive()
