"""The client transport against a scripted peer on a socketpair (the real daemon: tests/real)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tmem_agent.channel import transport as transport_module
from tmem_agent.channel import wire
from tmem_agent.channel.transport import (
    ConnectionLost,
    RemoteError,
    Runstate,
    StateError,
    Transport,
    TransportTimeout,
)

PAGE = b"p" * wire.PAGE_SIZE
Script = Callable[[socket.socket, wire.FrameDecoder], None]
Peer = Callable[..., Transport]


def read_frames(sock: socket.socket, decoder: wire.FrameDecoder, count: int) -> list[wire.Frame]:
    frames: list[wire.Frame] = []
    while len(frames) < count:
        data = sock.recv(1 << 16)
        if not data:
            break
        frames += [e for e in decoder.feed(data) if isinstance(e, wire.Frame)]
    return frames


def hello_reply(frame: wire.Frame) -> bytes:
    reply = wire.HelloReply(wire.HelloStatus.FRESH, 1, b"i" * 16, "test")
    return wire.encode_frame(wire.Op.HELLO, frame.request_id, reply.pack(), wire.Flag.REPLY)


@pytest.fixture
def peer() -> Iterator[Peer]:
    """Start a transport whose other end runs ``script`` in a thread (``max_write``: treat
    the socket as a virtio-serial port)."""
    threads: list[threading.Thread] = []
    transports: list[Transport] = []

    def start(script: Script, max_write: int | None = None) -> Transport:
        ours, theirs = socket.socketpair()

        def run() -> None:
            with theirs:
                script(theirs, wire.FrameDecoder())

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        transport = Transport(lambda: (ours.fileno(), ours.close), "peer", max_write).open()
        transports.append(transport)
        return transport

    yield start
    for transport in transports:
        transport.close()
    for thread in threads:
        thread.join(5)


def test_requests_before_hello_are_refused_by_the_state_machine(peer: Peer) -> None:
    transport = peer(lambda sock, dec: read_frames(sock, dec, 1))
    assert transport.runstate is Runstate.CONNECTED
    with pytest.raises(StateError, match="needs state ready"):
        transport.ping()
    transport.close()
    assert transport.runstate is Runstate.CLOSED
    with pytest.raises(StateError):
        transport.open()


def test_pipelined_replies_in_reverse_order_reach_their_requests(peer: Peer) -> None:
    def script(sock: socket.socket, dec: wire.FrameDecoder) -> None:
        [hello] = read_frames(sock, dec, 1)
        sock.sendall(hello_reply(hello))
        frames = read_frames(sock, dec, 20)
        for frame in reversed(frames):
            sock.sendall(wire.encode_frame(frame.op, frame.request_id, frame.payload * 2,
                                           wire.Flag.REPLY))

    transport = peer(script)
    assert transport.hello("vm", b"b" * 16, b"s" * 16).status is wire.HelloStatus.FRESH
    ids = [transport.submit(wire.Op.PING, bytes([i])) for i in range(20)]
    assert transport.in_flight == 20
    assert [transport.result(rid) for rid in ids] == [bytes([i]) * 2 for i in range(20)]
    assert transport.in_flight == 0


def test_error_replies_raise_remote_error_with_code(peer: Peer) -> None:
    def script(sock: socket.socket, dec: wire.FrameDecoder) -> None:
        [hello] = read_frames(sock, dec, 1)
        sock.sendall(hello_reply(hello))
        [get] = read_frames(sock, dec, 1)
        sock.sendall(wire.encode_error(get.request_id, get.op, wire.ErrorCode.NO_SUCH_POOL, "x"))
        read_frames(sock, dec, 1)

    transport = peer(script)
    transport.hello("vm", b"b" * 16, b"s" * 16)
    with pytest.raises(RemoteError, match="NO_SUCH_POOL") as info:
        transport.get(3, (1, 2, 3), 4)
    assert info.value.code == wire.ErrorCode.NO_SUCH_POOL


def test_hello_is_resent_until_answered_and_stale_bytes_are_ignored(peer: Peer) -> None:
    def script(sock: socket.socket, dec: wire.FrameDecoder) -> None:
        first = read_frames(sock, dec, 1)[0]
        # A reply to some earlier session's request, garbage, then nothing for the first hello.
        sock.sendall(wire.encode_frame(wire.Op.PUT, first.request_id + 1000, b"", wire.Flag.REPLY))
        sock.sendall(b"\xff" * 50)
        second = read_frames(sock, dec, 1)[0]
        assert second.op == wire.Op.HELLO and second.request_id != first.request_id
        sock.sendall(hello_reply(second))
        read_frames(sock, dec, 1)

    transport = peer(script)
    reply = transport.hello("vm", b"b" * 16, b"s" * 16, retry_every=0.3)
    assert reply.client_id == 1 and transport.runstate is Runstate.READY
    assert transport.stray_frames == 1 and transport.stream_errors >= 1


def test_silence_is_a_timeout_and_a_closed_peer_is_connection_lost(peer: Peer) -> None:
    gate = threading.Event()

    def script(sock: socket.socket, dec: wire.FrameDecoder) -> None:
        [hello] = read_frames(sock, dec, 1)
        sock.sendall(hello_reply(hello))
        read_frames(sock, dec, 1)
        gate.wait(5)

    transport = peer(script)
    transport.hello("vm", b"b" * 16, b"s" * 16)
    rid = transport.submit(wire.Op.PING)
    with pytest.raises(TransportTimeout):
        transport.result(rid, timeout=0.2)
    gate.set()
    with pytest.raises(ConnectionLost):
        transport.result(rid, timeout=5)
    assert transport.runstate is Runstate.CLOSED


def test_long_pipeline_keeps_reading_while_sending(peer: Peer) -> None:
    """The peer answers every request before reading the next: without reading replies while
    sending, both sides would block on full socket buffers."""

    def script(sock: socket.socket, dec: wire.FrameDecoder) -> None:
        [hello] = read_frames(sock, dec, 1)
        sock.sendall(hello_reply(hello))
        done = 0
        while done < 300:
            for frame in read_frames(sock, dec, 1):
                sock.sendall(wire.encode_frame(frame.op, frame.request_id, PAGE, wire.Flag.REPLY))
                done += 1

    transport = peer(script)
    transport.hello("vm", b"b" * 16, b"s" * 16)
    ids = [transport.submit(wire.Op.GET, wire.key_request(0, (0, 0, 0), i)) for i in range(300)]
    assert all(transport.result(rid) == PAGE for rid in ids)


def test_a_send_that_stalls_closes_the_transport_rather_than_leave_half_a_frame(
    peer: Peer,
) -> None:
    gate = threading.Event()

    def script(sock: socket.socket, dec: wire.FrameDecoder) -> None:
        [hello] = read_frames(sock, dec, 1)
        sock.sendall(hello_reply(hello))
        gate.wait(10)  # then read nothing: the socket buffers fill up

    transport = peer(script)
    transport.hello("vm", b"b" * 16, b"s" * 16)
    transport.send_stall_timeout = 0.3
    big = bytes(wire.MAX_PAYLOAD)
    try:
        with pytest.raises(TransportTimeout, match="took nothing"):
            for _ in range(64):  # far more than the socket buffers hold
                transport.submit(wire.Op.PING, big)
        assert transport.runstate is Runstate.CLOSED
        with pytest.raises(StateError):
            transport.submit(wire.Op.PING, b"after")
    finally:
        gate.set()


def test_a_port_is_written_and_read_in_pieces_of_one_buffer_many_per_call(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a virtio-serial port every piece of a writev or readv is one kernel buffer of at
    most 4 KiB (large buffers stall the guest under memory pressure), yet one system call
    moves many of them."""
    calls: dict[str, list[list[int]]] = {"readv": [], "writev": []}

    def recording(name: str) -> Callable[..., int]:
        real = getattr(transport_module.os, name)

        def call(fd: int, buffers: list[memoryview]) -> int:
            calls[name].append([len(b) for b in buffers])
            result: int = real(fd, buffers)
            return result

        return call

    monkeypatch.setattr(transport_module.os, "readv", recording("readv"))
    monkeypatch.setattr(transport_module.os, "writev", recording("writev"))
    payload = bytes(range(256)) * 256  # 64 KiB

    def script(sock: socket.socket, dec: wire.FrameDecoder) -> None:
        [hello] = read_frames(sock, dec, 1)
        sock.sendall(hello_reply(hello))
        for frame in read_frames(sock, dec, 3):
            sock.sendall(wire.encode_frame(frame.op, frame.request_id, frame.payload,
                                           wire.Flag.REPLY))

    transport = peer(script, max_write=transport_module.DEVICE_MAX_WRITE)
    transport.hello("vm", b"b" * 16, b"s" * 16)
    ids = [transport.submit(wire.Op.PING, payload) for _ in range(3)]
    assert [transport.result(rid) for rid in ids] == [payload] * 3
    pieces = [size for call in calls["writev"] + calls["readv"] for size in call]
    assert max(pieces) <= transport_module.DEVICE_MAX_WRITE
    assert max(len(call) for call in calls["writev"]) > 8
    assert max(len(call) for call in calls["readv"]) > 8


def unopened(script: Script | None, threads: list[threading.Thread]) -> Transport:
    """A transport not yet open; its peer runs ``script``, or is closed at once (None: as a
    virtio-serial port reads while nobody holds its host side)."""
    ours, theirs = socket.socketpair()
    if script is None:
        theirs.close()
    else:
        def run() -> None:
            with theirs:
                script(theirs, wire.FrameDecoder())

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
    return Transport(lambda: (ours.fileno(), ours.close), "peer")


def answer_hello(sock: socket.socket, decoder: wire.FrameDecoder) -> None:
    (frame,) = read_frames(sock, decoder, 1)
    sock.sendall(hello_reply(frame))
    read_frames(sock, decoder, 1)  # until the transport closes


def test_greeted_opens_the_stream_again_while_its_far_side_is_gone() -> None:
    threads: list[threading.Thread] = []
    made: list[Transport] = []

    def make() -> Transport:
        made.append(unopened(answer_hello if len(made) == 2 else None, threads))
        return made[-1]

    transport = transport_module.greeted(make, "vm", bytes(16), bytes(16), timeout=10,
                                         retry_every=0.01)
    assert transport is made[2] and transport.runstate is Runstate.READY
    assert [t.runstate for t in made[:2]] == [Runstate.CLOSED, Runstate.CLOSED]
    transport.close()
    for thread in threads:
        thread.join(5)


def test_greeted_gives_up_after_its_timeout_and_does_not_retry_a_refusal() -> None:
    threads: list[threading.Thread] = []
    made: list[Transport] = []

    def gone() -> Transport:
        made.append(unopened(None, threads))
        return made[-1]

    with pytest.raises(ConnectionLost, match="still so after 0.2 s"):
        transport_module.greeted(gone, "vm", bytes(16), bytes(16), timeout=0.2,
                                 retry_every=0.05)
    assert 2 <= len(made) <= 5

    def refuse(sock: socket.socket, decoder: wire.FrameDecoder) -> None:
        (frame,) = read_frames(sock, decoder, 1)
        sock.sendall(wire.encode_error(frame.request_id, frame.op, wire.ErrorCode.WRONG_VM,
                                       "not yours"))

    made.clear()
    with pytest.raises(RemoteError, match="WRONG_VM"):
        transport_module.greeted(lambda: made.append(unopened(refuse, threads)) or made[-1],
                                 "vm", bytes(16), bytes(16), timeout=10, retry_every=0.01)
    assert len(made) == 1 and made[0].runstate is Runstate.CLOSED
    for thread in threads:
        thread.join(5)
