"""The frame format, the resynchronising decoder and the payload of every op."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmem_agent.channel import wire
from tmem_agent.channel.wire import ErrorCode, Frame, FrameDecoder, FrameError, Op

PAGE = bytes(range(256)) * 16


def frames_of(events: list[Frame | FrameError]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def errors_of(events: list[Frame | FrameError]) -> list[FrameError]:
    return [e for e in events if isinstance(e, FrameError)]


def test_header_is_24_bytes_and_frame_round_trips() -> None:
    data = wire.encode_frame(Op.PUT, 77, b"payload", wire.Flag.REPLY)
    assert wire.HEADER_SIZE == 24 and len(data) == 24 + 7
    [frame] = FrameDecoder().feed(data)
    assert frame == Frame(Op.PUT, wire.Flag.REPLY, 77, b"payload")


def test_byte_by_byte_feeding_yields_every_frame() -> None:
    stream = b"".join(wire.encode_frame(Op.PING, i, bytes([i]) * i) for i in range(1, 6))
    decoder = FrameDecoder()
    events = [e for b in stream for e in decoder.feed(bytes([b]))]
    assert [(f.request_id, f.payload) for f in frames_of(events)] == [
        (i, bytes([i]) * i) for i in range(1, 6)
    ]
    assert not errors_of(events) and decoder.buffered == 0


def test_garbage_before_a_frame_is_skipped_and_reported_once() -> None:
    events = FrameDecoder().feed(b"\x00junk TMEM-not-a-header" + wire.encode_frame(Op.PING, 5))
    [error] = errors_of(events)
    assert error.code is ErrorCode.GARBAGE and error.request_id is None
    assert [f.request_id for f in frames_of(events)] == [5]


def test_bad_payload_crc_names_the_request_and_the_next_frame_survives() -> None:
    bad = bytearray(wire.encode_frame(Op.PUT, 9, PAGE))
    bad[-1] ^= 0xFF
    events = FrameDecoder().feed(bytes(bad) + wire.encode_frame(Op.GET, 10))
    assert [(e.code, e.request_id) for e in errors_of(events)] == [(ErrorCode.BAD_CRC, 9)]
    assert [f.request_id for f in frames_of(events)] == [10]


def test_oversize_length_is_refused_without_buffering_it() -> None:
    body = wire._HEADER_BODY.pack(wire.MAGIC, 1, Op.PUT, 0, 3, wire.MAX_PAYLOAD + 1, 0)
    header = body + wire.U32.pack(zlib.crc32(body))
    decoder = FrameDecoder()
    events = decoder.feed(header + os.urandom(1000) + wire.encode_frame(Op.PING, 4))
    assert (ErrorCode.TOO_LARGE, 3) in [(e.code, e.request_id) for e in errors_of(events)]
    assert [f.request_id for f in frames_of(events)] == [4]
    assert decoder.buffered == 0


def test_other_version_is_skipped_whole_with_its_request_id() -> None:
    body = wire._HEADER_BODY.pack(wire.MAGIC, 2, Op.PING, 0, 8, 3, zlib.crc32(b"abc"))
    other = body + wire.U32.pack(zlib.crc32(body)) + b"abc"
    events = FrameDecoder().feed(other + wire.encode_frame(Op.PING, 9))
    assert [(e.code, e.request_id) for e in errors_of(events)] == [(ErrorCode.BAD_VERSION, 8)]
    assert [f.request_id for f in frames_of(events)] == [9]


def test_stalled_partial_frame_is_dropped_and_the_stream_rescanned() -> None:
    decoder = FrameDecoder()
    partial = wire.encode_frame(Op.PUT, 21, PAGE)[:100]
    assert decoder.feed(partial) == []
    assert decoder.partial_header() == (21, Op.PUT)
    events = decoder.drop_partial()
    assert (events[0].code, events[0].request_id) == (ErrorCode.TIMEOUT, 21)  # type: ignore
    assert decoder.buffered == 0
    assert frames_of(decoder.feed(wire.encode_frame(Op.PING, 22)))[0].request_id == 22


def test_a_tail_that_may_start_a_magic_is_kept() -> None:
    decoder = FrameDecoder()
    frame = wire.encode_frame(Op.PING, 1)
    events = decoder.feed(b"xyzTM")
    assert [e.skipped for e in errors_of(events)] == [3] and decoder.buffered == 2
    assert frames_of(decoder.feed(frame[2:])) == [Frame(Op.PING, 0, 1, b"")]


@settings(max_examples=300, deadline=None)
@given(
    garbage=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=12),
    payload=st.binary(max_size=2000),
)
def test_fuzz_garbage_then_a_frame_decodes_the_frame(
    garbage: bytes, cuts: list[int], payload: bytes
) -> None:
    stream = garbage + wire.encode_frame(Op.PUT, 0xABCDEF, payload)
    decoder = FrameDecoder()
    events: list[Frame | FrameError] = []
    pos = 0
    for cut in cuts:
        events += decoder.feed(stream[pos : pos + cut])
        pos += cut
    events += decoder.feed(stream[pos:])
    partial = decoder.partial_header()
    if partial is not None:  # garbage ended in a valid-looking header: the stall timer's job
        events += decoder.drop_partial()
    assert frames_of(events)[-1] == Frame(Op.PUT, 0, 0xABCDEF, payload)
    assert decoder.buffered <= wire.HEADER_SIZE + wire.MAX_PAYLOAD


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=64))
def test_fuzz_random_bytes_never_raise_and_never_pile_up(data: bytes, step: int) -> None:
    decoder = FrameDecoder(max_payload=1024)
    for off in range(0, len(data), step):
        for event in decoder.feed(data[off : off + step]):
            assert isinstance(event, Frame | FrameError)
        assert decoder.buffered <= wire.HEADER_SIZE + 1024 + step


# ----- payloads ----------------------------------------------------------------------------


def test_hello_and_reply_round_trip() -> None:
    hello = wire.Hello("vm-1", b"B" * 16, b"S" * 16, capabilities=5)
    assert wire.Hello.unpack(hello.pack()) == hello
    reply = wire.HelloReply(
        wire.HelloStatus.RESUMED, 7, b"I" * 16, "0.1.0",
        pools=[wire.PoolInfo(0, 1), wire.PoolInfo(3, 2, b"U" * 16)],
    )
    assert wire.HelloReply.unpack(reply.pack()) == reply


@pytest.mark.parametrize("payload", [b"", b"\x00" * 10, wire.Hello("x", b"B" * 16, b"S" * 16)
                                     .pack()[:-1], wire.Hello("\x07", b"B" * 16, b"S" * 16).pack()])
def test_bad_hello_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.Hello.unpack(payload)


def test_single_page_requests_round_trip() -> None:
    oid = (1, 2**64 - 1, 3)
    assert wire.parse_key(wire.key_request(4, oid, 9, PAGE), True) == (4, oid, 9, PAGE)
    assert wire.parse_key(wire.key_request(4, oid, 9), False) == (4, oid, 9, b"")
    assert wire.parse_object(wire.object_request(2, oid)) == (2, oid)
    assert wire.parse_new_pool(wire.new_pool_request(1, b"u" * 16, "lz4")) == (1, b"u" * 16, "lz4")
    assert wire.parse_new_pool(wire.new_pool_request(0)) == (0, bytes(16), None)
    assert wire.parse_u32(wire.u32(123456)) == 123456
    with pytest.raises(wire.ProtocolError):
        wire.parse_key(wire.key_request(4, oid, 9, PAGE[:-1]), True)


def test_batches_round_trip() -> None:
    keys = [((i, 0, 0), i * 2) for i in range(5)]
    pages = [bytes([i]) * wire.PAGE_SIZE for i in range(5)]
    assert wire.parse_batch(wire.batch_request(3, keys, pages), True) == (3, keys, pages)
    assert wire.parse_batch(wire.batch_request(3, keys), False) == (3, keys, [])
    results: list[bytes | None] = [pages[0], None, pages[2], None, pages[4]]
    assert wire.parse_get_batch_reply(wire.get_batch_reply(results), 5) == results
    flags = [True, False, True, True, False]
    assert wire.parse_flags_reply(wire.flags_reply(flags), 5) == flags


@pytest.mark.parametrize("count", [0, wire.MAX_BATCH + 1])
def test_batch_sizes_outside_the_limit_are_refused(count: int) -> None:
    with pytest.raises(wire.ProtocolError, match="batch"):
        wire.parse_batch(wire.BATCH_HEAD.pack(0, count), False)


def test_error_frame_round_trips() -> None:
    [frame] = FrameDecoder().feed(wire.encode_error(5, Op.GET, ErrorCode.NO_SUCH_POOL, "no pool"))
    assert frame.flags == wire.Flag.REPLY | wire.Flag.ERROR and frame.request_id == 5
    assert wire.decode_error(frame.payload) == (ErrorCode.NO_SUCH_POOL, "no pool")


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=12),
    reads=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=8),
)
def test_fuzz_zero_copy_reads_through_a_small_buffer(
    payloads: list[bytes], reads: list[int]
) -> None:
    """Reads into get_buffer() and pulled views, with a buffer small enough to compact often."""
    stream = b"".join(wire.encode_frame(Op.PING, i, p) for i, p in enumerate(payloads))
    decoder = FrameDecoder(max_payload=300, read_size=32)
    got: list[tuple[int, bytes]] = []
    pos = 0
    step = 0
    while pos < len(stream):
        space = decoder.get_buffer()
        n = min(len(space), reads[step % len(reads)], len(stream) - pos)
        space[:n] = stream[pos : pos + n]
        decoder.commit(n)
        pos, step = pos + n, step + 1
        while (event := decoder.next_event()) is not None:
            assert isinstance(event, Frame) and isinstance(event.payload, memoryview)
            got.append((event.request_id, bytes(event.payload)))
    assert got == list(enumerate(payloads))
    assert decoder.buffered == 0


def test_commit_beyond_the_buffer_is_refused() -> None:
    decoder = FrameDecoder(max_payload=100, read_size=16)
    with pytest.raises(ValueError, match="does not fit"):
        decoder.commit(len(decoder.get_buffer()) + 1)
    assert decoder.buffered == 0


def test_buffer_starts_small_and_grows_for_the_largest_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.capacity <= 64 << 10  # an idle connection costs little
    largest = os.urandom(wire.MAX_PAYLOAD)
    small = wire.encode_frame(Op.PING, 1, b"x" * 100)
    events = decoder.feed(small + wire.encode_frame(Op.PUT_BATCH, 2, largest) + small)
    assert [(f.request_id, f.payload) for f in frames_of(events)] == [
        (1, b"x" * 100), (2, largest), (1, b"x" * 100)]
    assert not errors_of(events)
    assert wire.MAX_PAYLOAD < decoder.capacity <= decoder.max_capacity == (
        wire.HEADER_SIZE + wire.MAX_PAYLOAD + decoder.read_size)


@settings(max_examples=150)
@given(
    payloads=st.lists(st.binary(max_size=3000), min_size=1, max_size=10),
    reads=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=8),
)
def test_fuzz_zero_copy_reads_while_the_buffer_grows(
    payloads: list[bytes], reads: list[int]
) -> None:
    stream = b"".join(wire.encode_frame(Op.PING, i, p) for i, p in enumerate(payloads))
    decoder = FrameDecoder(max_payload=3000, read_size=100, initial_size=64)
    got: list[tuple[int, bytes]] = []
    pos = step = 0
    while pos < len(stream):
        space = decoder.get_buffer()
        assert space, "no room although every frame fits"
        n = min(len(space), reads[step % len(reads)], len(stream) - pos)
        space[:n] = stream[pos : pos + n]
        decoder.commit(n)
        pos, step = pos + n, step + 1
        while (event := decoder.next_event()) is not None:
            assert isinstance(event, Frame)
            got.append((event.request_id, bytes(event.payload)))
    assert got == list(enumerate(payloads))
    assert decoder.capacity <= decoder.max_capacity


def test_error_codes_of_identity_and_limits_keep_their_numbers() -> None:
    assert (ErrorCode.VM_NAME_IN_USE, ErrorCode.BUSY, ErrorCode.WRONG_VM,
            ErrorCode.NOT_AUTHORISED) == (15, 16, 17, 18)
