"""VM connections: one asyncio Protocol per guest stream, each its own tmem client.

Each admitted VM's virtio-serial chardev connects to that VM's own unix socket (QEMU
``-chardev socket,path=...,reconnect=1``), and every connection there belongs to that VM.
The operator's shared socket (``--socket``, mode 0600) serves trusted local tools, whose
hellos name their VM (docs/trust-model.md). The sockets are :mod:`.vmserver`'s. A connection
is a small state machine (:class:`Runstate`): it answers only hello and ping until a hello
binds it to a session (see :mod:`tmemd.service.sessions`), then every op. A NEW_POOL for a
shared pool needs the operator's authorisation of its uuid for the VM.

Reads land straight in the frame decoder's buffer (a BufferedProtocol: no allocation per
read; the buffer starts small and grows to a frame's size when needed), and every complete
frame is served at once, in order, parsed through memoryviews.
Flow control: when the transport's write buffer passes its high mark the connection stops
pulling frames and stops reading; the unserved bytes wait in the decoder's buffer. A guest
that stops reading its replies thus costs one read buffer and one write buffer, and never
stalls other guests. A frame still incomplete ``stall_timeout`` seconds after its first bytes
arrived is dropped and the stream resynchronised.

Limits: at most ``max_connections`` streams at once (more are told BUSY in an error frame and
closed), and a stream that has not completed a hello within ``hello_timeout`` seconds is
closed. On the operator's socket that time counts from the connect. On a VM's own socket it
counts from the stream's first byte: QEMU connects when the VM starts, but the guest opens
its end of the port whenever it likes (a tool may run an hour later), and only the VM's
owner can connect there. Closing such a silent stream would only make QEMU connect again a
second later, and a guest opening the port in that second would find nobody there.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tmem_agent.channel import wire

from .. import __version__
from ..store.errors import InvalidArgument, NoSuchClient, NoSuchPool, TmemError, TooManyPools
from ..store.pools import PoolFlags
from .limits import ConnectionLimits
from .sessions import NotAuthorised, Session, VmNameInUse, WrongVm

if TYPE_CHECKING:
    from ..store.tmem import TmemStore
    from .sessions import SessionRegistry


class ConnectionHost(Protocol):
    """What a connection needs from the server that accepted it (:mod:`.vmserver`)."""

    store: TmemStore
    registry: SessionRegistry
    limits: ConnectionLimits
    instance_id: bytes
    connections: set[VmConnection]

__all__ = ["ConnectionLimits", "VmConnection", "keep_freed_memory"]

log = logging.getLogger(__name__)

WRITE_HIGH = 4 << 20
WRITE_LOW = 1 << 20
# Frames larger than this are written as header + payload, avoiding a copy of the payload.
JOIN_LIMIT = 16 << 10
SOCKET_SEND_BUFFER = 4 << 20  # the kernel caps it at net.core.wmem_max

_ERROR_CODES: tuple[tuple[type[Exception], wire.ErrorCode], ...] = (
    (wire.ProtocolError, wire.ErrorCode.BAD_REQUEST),
    (NoSuchPool, wire.ErrorCode.NO_SUCH_POOL),
    (TooManyPools, wire.ErrorCode.TOO_MANY_POOLS),
    (NoSuchClient, wire.ErrorCode.NOT_READY),
    (VmNameInUse, wire.ErrorCode.VM_NAME_IN_USE),
    (WrongVm, wire.ErrorCode.WRONG_VM),
    (NotAuthorised, wire.ErrorCode.NOT_AUTHORISED),
    (TmemError, wire.ErrorCode.INVALID_ARGUMENT),
)


class Runstate(enum.Enum):
    CONNECTED = "connected"  # waiting for a hello
    RUNNING = "running"  # bound to a session: serving every op
    DISCONNECTING = "disconnecting"  # superseded or closing; frames are ignored
    DISCONNECTED = "disconnected"


_SERVING = (Runstate.CONNECTED, Runstate.RUNNING)


class NeedsHello(Exception):
    """An op other than hello or ping before the handshake."""


class VmConnection(asyncio.BufferedProtocol):
    """One guest stream; ``socket_vm`` is the VM whose socket it came in on (None: the
    operator's socket)."""

    def __init__(self, server: ConnectionHost, number: int, socket_vm: str | None = None) -> None:
        self.server = server
        self.store = server.store
        self.socket_vm = socket_vm
        self.runstate = Runstate.CONNECTED
        self.peer = f"conn{number}" if socket_vm is None else f"conn{number}@{socket_vm}"
        self.log = log.getChild(self.peer)
        self.session: Session | None = None
        self.client_id = 0
        self.frames_in = 0
        self.frames_out = 0
        self.errors = 0
        self._transport: asyncio.Transport | None = None
        self._decoder = wire.FrameDecoder()
        self._writes_paused = False
        self._partial_since: float | None = None  # when the incomplete frame at the head began
        self._stall_timer: asyncio.TimerHandle | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._handlers: dict[int, Callable[[wire.Payload], bytes]] = {
            wire.Op.PING: bytes,
            wire.Op.STATS: self._stats,
            wire.Op.NEW_POOL: self._new_pool,
            wire.Op.DESTROY_POOL: self._destroy_pool,
            wire.Op.PUT: self._put,
            wire.Op.GET: self._get,
            wire.Op.FLUSH_PAGE: self._flush_page,
            wire.Op.FLUSH_OBJECT: self._flush_object,
            wire.Op.PUT_BATCH: self._put_batch,
            wire.Op.GET_BATCH: self._get_batch,
            wire.Op.FLUSH_BATCH: self._flush_batch,
        }

    # ----- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if len(self.server.connections) >= self.server.limits.max_connections:
            reason = f"refused: {len(self.server.connections)} connections already (the limit)"
            self.log.warning("%s", reason)
            self._send_error(0, 0, wire.ErrorCode.BUSY, reason)  # written before the close
            self.runstate = Runstate.DISCONNECTING
            transport.close()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # room for several batch replies: fewer wake-ups per reply
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        self.server.connections.add(self)
        self._arm_stall_timer()
        if self.socket_vm is None:  # a VM's stream waits for its guest's first byte
            self._arm_hello_timer()
        self.log.info("connected")

    def connection_lost(self, exc: Exception | None) -> None:
        self.runstate = Runstate.DISCONNECTED
        for timer in (self._stall_timer, self._hello_timer):
            if timer is not None:
                timer.cancel()
        if self not in self.server.connections:
            return  # refused at connect
        if self.session is not None:
            self.server.registry.detach(self.session, self)
        self.server.connections.discard(self)
        self.log.info("disconnected (%d frames in, %d out, %d errors)%s", self.frames_in,
                      self.frames_out, self.errors, f": {exc}" if exc else "")

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer()  # reads land in the decoder's own buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._hello_timer is None and self.runstate is Runstate.CONNECTED:
            self._arm_hello_timer()
        self._decoder.commit(nbytes)
        self._serve_buffered()

    def eof_received(self) -> bool:
        return False  # close our end too

    def pause_writing(self) -> None:
        self._writes_paused = True
        if self._transport is not None:
            self._transport.pause_reading()
        self.log.debug("peer is slow to read: paused")

    def resume_writing(self) -> None:
        self._writes_paused = False
        self._serve_buffered()
        if self._writes_paused:
            return  # the buffered frames filled the write buffer again
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # ----- session hooks -------------------------------------------------------------------
    def supersede(self) -> None:
        """A newer connection took over our VM: say so and close."""
        self.session = None
        if self.runstate is Runstate.RUNNING:
            self._send_error(0, 0, wire.ErrorCode.SUPERSEDED, "another connection took over")
        self.close()

    def refuse(self, code: wire.ErrorCode, message: str) -> None:
        """Tell the peer why in an error frame, then close (pending replies go first)."""
        self._send_error(0, 0, code, message)
        self.close()

    def is_live(self) -> bool:
        transport = self._transport
        return (self.runstate in _SERVING and transport is not None
                and not transport.is_closing())

    def close(self) -> None:
        """Close after the pending replies are written."""
        if self.runstate in _SERVING:
            self.runstate = Runstate.DISCONNECTING
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping pending replies."""
        self.close()
        if self._transport is not None:
            self._transport.abort()

    # ----- serving -------------------------------------------------------------------------
    def _serve_buffered(self) -> None:
        """Serve buffered frames until more bytes are needed or the peer must read first.

        Payloads are views into the decoder's buffer: each frame is served before the next
        read can overwrite it."""
        next_event = self._decoder.next_event
        while not self._writes_paused and self.runstate in _SERVING:
            event = next_event()
            if event is None:
                if not self._decoder.buffered:
                    self._partial_since = None
                elif self._partial_since is None:
                    self._partial_since = time.monotonic()
                return
            self._partial_since = None
            self._dispatch(event)

    def _dispatch(self, event: wire.Frame | wire.FrameError) -> None:
        if type(event) is wire.Frame:
            self._serve(event)
        else:
            assert isinstance(event, wire.FrameError)
            self._stream_error(event)

    def _serve(self, frame: wire.Frame) -> None:
        self.frames_in += 1
        if self.session is not None:
            self.session.frames_in += 1
        op, rid = frame.op, frame.request_id
        try:
            if frame.flags & wire.REPLY:
                raise wire.ProtocolError("the daemon takes requests, not replies")
            if op == wire.Op.HELLO:
                reply = self._hello(frame.payload)
            else:
                handler = self._handlers.get(op)
                if handler is None:
                    self._send_error(rid, op, wire.ErrorCode.UNKNOWN_OP, f"unknown op {op}")
                    return
                if self.runstate is not Runstate.RUNNING and op != wire.Op.PING:
                    raise NeedsHello(f"op {wire.Op(op).name} needs a hello first")
                reply = handler(frame.payload)
        except NeedsHello as exc:
            self._send_error(rid, op, wire.ErrorCode.NOT_READY, str(exc))
            return
        except Exception as exc:  # every failure becomes an error reply; the stream goes on
            code = next((c for kind, c in _ERROR_CODES if isinstance(exc, kind)), None)
            if code is None:
                code = wire.ErrorCode.INTERNAL
                self.log.exception("op %d (request %d) failed", op, rid)
            self._send_error(rid, op, code, str(exc) or type(exc).__name__)
            return
        self._send(op, rid, reply, wire.REPLY)

    def _stream_error(self, event: wire.FrameError) -> None:
        self.log.warning("stream: %s: %s (%d bytes, request %s)", event.code.name, event.detail,
                         event.skipped, event.request_id)
        self._send_error(event.request_id or 0, event.op, event.code, event.detail)

    def _send(self, op: int, rid: int, payload: bytes, flags: int) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        header = wire.encode_header(op, rid, payload, flags)
        if len(payload) <= JOIN_LIMIT:
            transport.write(header + payload)
        else:
            transport.write(header)
            transport.write(payload)
        self.frames_out += 1
        if self.session is not None:  # the session's counters add up over its connections
            self.session.frames_out += 1

    def _send_error(self, rid: int, op: int, code: wire.ErrorCode, message: str) -> None:
        self.errors += 1
        if self.session is not None:
            self.session.errors += 1
        self._send(op, rid, wire.error_payload(code, message), wire.ERROR_REPLY)

    # ----- stall detection -----------------------------------------------------------------
    def _arm_hello_timer(self) -> None:
        self._hello_timer = asyncio.get_running_loop().call_later(
            self.server.limits.hello_timeout, self._check_hello)

    def _arm_stall_timer(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.server.limits.stall_timeout / 2
        self._stall_timer = loop.call_later(period, self._check_stall)

    def _check_stall(self) -> None:
        """Drop a frame still incomplete ``stall_timeout`` s after its first bytes came.

        Its age counts, not the time since the last byte: a restarted agent resending hello
        feeds a stale partial frame a little at a time and must not keep it alive."""
        if self.runstate is Runstate.DISCONNECTED:
            return
        since = self._partial_since
        if since is not None and not self._writes_paused and (
                time.monotonic() - since > self.server.limits.stall_timeout):
            self._partial_since = None
            for event in self._decoder.drop_partial():
                self._dispatch(event)
            self._serve_buffered()
        self._arm_stall_timer()

    def _check_hello(self) -> None:
        if self.runstate is Runstate.CONNECTED:
            self.log.warning("no hello in %.1f s: closing", self.server.limits.hello_timeout)
            self.abort()  # also when it does not read: it must not keep its slot

    # ----- ops -----------------------------------------------------------------------------
    def _hello(self, payload: wire.Payload) -> bytes:
        hello = wire.Hello.unpack(payload)
        if hello.page_size != wire.PAGE_SIZE:
            raise InvalidArgument(f"page size {hello.page_size} unsupported; use {wire.PAGE_SIZE}")
        registry = self.server.registry
        previous = self.session
        # a refusal (wrong VM, name in use) changes nothing
        self.session, status = registry.attach(hello, self, self.socket_vm)
        if previous is not None and previous is not self.session:
            registry.detach(previous, self)
        self.client_id = self.session.client_id
        self.runstate = Runstate.RUNNING
        self.log = log.getChild(f"{self.peer}.{hello.vm}")
        self.log.info("hello from vm %s: %s, client %d", hello.vm, status.name.lower(),
                      self.client_id)
        reply = wire.HelloReply(status, self.client_id, self.server.instance_id, __version__,
                                max_payload=self._decoder.max_payload,
                                capabilities=wire.CAP_KEEP_ON_GET,
                                pools=registry.pools(self.session))
        return reply.pack()

    def _stats(self, payload: wire.Payload) -> bytes:
        assert self.session is not None
        return wire.json_payload({"client": self.store.client_stats(self.client_id),
                                  "session": self.session.info()})

    def _new_pool(self, payload: wire.Payload) -> bytes:
        flags, uuid, codec = wire.parse_new_pool(payload)
        assert self.session is not None
        vm = self.session.vm
        if flags & PoolFlags.SHARED and not self.server.registry.may_share(vm, uuid):
            raise NotAuthorised(f"vm {vm} is not authorised for shared pool {uuid.hex()}"
                                " (control op share_allow)")
        return wire.u32(self.store.new_pool(self.client_id, flags, uuid, codec))

    def _destroy_pool(self, payload: wire.Payload) -> bytes:
        return wire.u32(self.store.destroy_pool(self.client_id, wire.parse_u32(payload)))

    def _put(self, payload: wire.Payload) -> bytes:
        pool, oid, index, page = wire.parse_key(payload, True)
        return b"\x01" if self.store.put(self.client_id, pool, oid, index, page) else b"\x00"

    def _get(self, payload: wire.Payload) -> bytes:
        pool, oid, index, _ = wire.parse_key(payload, False)
        return self.store.get(self.client_id, pool, oid, index) or b""

    def _flush_page(self, payload: wire.Payload) -> bytes:
        pool, oid, index, _ = wire.parse_key(payload, False)
        return b"\x01" if self.store.flush_page(self.client_id, pool, oid, index) else b"\x00"

    def _flush_object(self, payload: wire.Payload) -> bytes:
        pool, oid = wire.parse_object(payload)
        return wire.u32(self.store.flush_object(self.client_id, pool, oid))

    def _put_batch(self, payload: wire.Payload) -> bytes:
        pool, keys, pages = wire.parse_batch(payload, True)
        put, cid = self.store.put, self.client_id
        pairs = zip(keys, pages, strict=True)
        return wire.flags_reply([put(cid, pool, o, i, p) for (o, i), p in pairs])

    def _get_batch(self, payload: wire.Payload) -> bytes:
        pool, keys, _ = wire.parse_batch(payload, False)
        get, cid = self.store.get, self.client_id
        return wire.get_batch_reply([get(cid, pool, o, i) for o, i in keys])

    def _flush_batch(self, payload: wire.Payload) -> bytes:
        pool, keys, _ = wire.parse_batch(payload, False)
        flush, cid = self.store.flush_page, self.client_id
        return wire.flags_reply([flush(cid, pool, o, i) for o, i in keys])


def keep_freed_memory(nbytes: int = 256 << 20) -> bool:
    """Make glibc keep up to ``nbytes`` of freed memory instead of unmapping it at once.

    Every batch frame is a few hundred KiB of fresh buffers; by default glibc serves those
    with mmap and unmaps them on free, so each frame pays page faults on every 4 KiB again
    (measured: 437 us instead of 81 us to decode a 64-page frame). Returns False where
    mallopt is not available (not glibc); nothing else changes then.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1 and mallopt(m_trim_threshold, nbytes) == 1
    log.debug("malloc tuned for large frames: %s", ok)
    return ok
