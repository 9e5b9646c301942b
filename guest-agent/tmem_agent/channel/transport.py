"""A client of the tmem daemon over a unix socket or a virtio-serial character device.

Standard library only. The connection is an explicit state machine (:class:`Runstate`); calls
made in the wrong state raise :class:`StateError`. Requests are pipelined: :meth:`Transport.submit`
sends a frame and returns its request id, :meth:`Transport.result` waits for the reply with that
id, whatever order replies arrive in. While sending, the transport keeps reading replies, so a
long pipeline cannot deadlock against a daemon that stops reading until its replies are taken.

The stream may carry stale bytes (a partial frame from an earlier agent, replies to requests of
an earlier session): the decoder skips them, and replies to unknown ids are ignored. Request ids
start at a random value for the same reason.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import random
import select
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import wire

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Largest single write to a virtio-serial port: the guest kernel allocates a buffer of the
# write's size, so large writes fail or stall under memory pressure (docs/facts.md).
DEVICE_MAX_WRITE = 4096
# Socket send buffer asked for (the kernel caps it at net.core.wmem_max): room for a whole
# pipeline of batches means fewer hand-offs between agent and daemon per request.
SOCKET_SEND_BUFFER = 4 << 20
IOV_MAX = 64  # buffers per writev or readv
# What one read() of a virtio-serial port returns at most: the guest kernel's receive buffers
# are one page each.
PORT_BUFFER = 4096
PARTIAL_FRAME_WAIT = 0.005  # pump(): seconds to wait for the rest of a frame that began
SEND_STALL_TIMEOUT = 30.0  # seconds a send may make no progress before the stream is given up
GREETED_TIMEOUT_S = 60.0  # a tool's wait for tmemd's hello reply (see greeted)


def port_pieces(parts: Sequence[memoryview], max_write: int) -> list[memoryview]:
    """The first of ``parts`` cut into pieces of at most ``max_write`` bytes, at most IOV_MAX.

    A virtio-serial port implements only read() and write(), so the kernel runs readv() and
    writev() on it as a loop of single calls, one per piece, stopping at the first short one:
    the guest still allocates one small buffer per piece (what keeps it out of trouble under
    memory pressure), while the agent makes one system call, not one per 4 KiB.
    """
    pieces: list[memoryview] = []
    for part in parts:
        for start in range(0, len(part), max_write):
            pieces.append(part[start : start + max_write])
            if len(pieces) == IOV_MAX:
                return pieces
    return pieces


class Runstate(enum.Enum):
    IDLE = "idle"  # not connected
    CONNECTED = "connected"  # stream open, no hello answered yet
    READY = "ready"  # hello answered: every op may be sent
    CLOSED = "closed"  # closed for good


class TransportError(Exception):
    """Base of every error this module raises."""


class StateError(TransportError):
    """A call was made in a state that does not allow it."""


class TransportTimeout(TransportError):
    """No reply (or no progress sending) within the time allowed."""


class ConnectionLost(TransportError):
    """The stream reached end of file or failed."""


class RemoteError(TransportError):
    """The daemon answered with an error frame, or dropped the request as a bad frame."""

    def __init__(self, op: int, request_id: int, code: int, message: str) -> None:
        try:
            name = wire.ErrorCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"request {request_id} (op {op}) failed: {name}: {message}")
        self.op = op
        self.request_id = request_id
        self.code = code
        self.message = message


def require(*states: Runstate) -> Callable[[F], F]:
    """Refuse the call unless the transport is in one of ``states``."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Transport, *args: Any, **kwargs: Any) -> Any:
            if self.runstate not in states:
                wanted = " or ".join(s.value for s in states)
                now = self.runstate.value
                raise StateError(f"{method.__name__} needs state {wanted}, is {now}")
            return method(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


class Transport:
    """One framed, pipelined connection to tmemd. Not thread-safe: use it from one thread."""

    def __init__(
        self,
        opener: Callable[[], tuple[int, Callable[[], None]]],
        name: str,
        max_write: int | None = None,
    ) -> None:
        self._opener = opener
        self.send_stall_timeout = SEND_STALL_TIMEOUT
        self._fd = -1
        self._closer: Callable[[], None] = lambda: None
        self._poller = select.poll()
        self.max_write = max_write
        self.runstate = Runstate.IDLE
        self.log = log.getChild(name)
        self.hello_reply: wire.HelloReply | None = None
        self._decoder = wire.FrameDecoder()
        self._next_id = random.randrange(1, 1 << 31)
        self._waiting: dict[int, int] = {}  # request id -> op
        self._done: dict[int, wire.Frame | wire.FrameError] = {}
        self.stray_frames = 0  # replies to ids nobody waits for
        self.stream_errors = 0  # garbage and other decoder events without a pending id

    # ----- constructors --------------------------------------------------------------------
    @classmethod
    def unix(cls, path: str) -> Transport:
        def opener() -> tuple[int, Callable[[], None]]:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            return sock.fileno(), sock.close

        return cls(opener, os.path.basename(path))

    @classmethod
    def device(cls, path: str, max_write: int = DEVICE_MAX_WRITE) -> Transport:
        def opener() -> tuple[int, Callable[[], None]]:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            return fd, lambda: os.close(fd)

        return cls(opener, os.path.basename(path), max_write)

    @classmethod
    def from_socket(cls, sock: socket.socket, name: str = "socket") -> Transport:
        return cls(lambda: (sock.fileno(), sock.close), name)

    # ----- life cycle ----------------------------------------------------------------------
    @require(Runstate.IDLE)
    def open(self) -> Transport:
        fd, closer = self._opener()
        os.set_blocking(fd, False)
        self._fd, self._closer = fd, closer
        self._poller.register(fd, select.POLLIN)
        self.runstate = Runstate.CONNECTED
        self.log.debug("connected")
        return self

    def close(self) -> None:
        if self.runstate is Runstate.CLOSED:
            return
        self.runstate = Runstate.CLOSED
        if self._fd >= 0:
            self._closer()
            self._fd = -1
        self._waiting.clear()
        self.log.debug("closed")

    def __enter__(self) -> Transport:
        if self.runstate is Runstate.IDLE:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def in_flight(self) -> int:
        """Requests submitted whose result has not been collected yet."""
        return len(self._waiting) + len(self._done)

    # ----- handshake -----------------------------------------------------------------------
    @require(Runstate.CONNECTED, Runstate.READY)
    def hello(
        self,
        vm: str,
        boot_id: bytes,
        session_id: bytes,
        capabilities: int = 0,
        timeout: float = 10.0,
        retry_every: float = 1.0,
    ) -> wire.HelloReply:
        """Introduce this agent; resend while unanswered (the daemon may be resynchronising
        past a stale partial frame). Returns the daemon's reply, also kept as ``hello_reply``."""
        payload = wire.Hello(vm, boot_id, session_id, capabilities=capabilities).pack()
        deadline = time.monotonic() + timeout
        sent: list[int] = []
        try:
            while True:
                sent.append(self._submit(wire.Op.HELLO, payload))
                answered = self._wait_any(sent, min(deadline, time.monotonic() + retry_every))
                if answered is not None:
                    reply = wire.HelloReply.unpack(self.result(answered))
                    break
                if time.monotonic() >= deadline:
                    raise TransportTimeout(f"no hello reply in {timeout} s")
                self.log.info("hello unanswered, sending it again")
        finally:
            for rid in sent:
                self._waiting.pop(rid, None)
                self._done.pop(rid, None)
        self.hello_reply = reply
        self.runstate = Runstate.READY
        self.log.info("hello answered: %s, client %d", reply.status.name.lower(), reply.client_id)
        return reply

    # ----- pipelined requests --------------------------------------------------------------
    @require(Runstate.READY)
    def submit(self, op: int, payload: wire.Payload | bytearray = b"") -> int:
        """Send one request; return its id for :meth:`result`. ``payload`` may be a view of
        the caller's own buffer: it is only read until this call returns."""
        return self._submit(op, payload)

    # ----- for a caller's own poll loop ----------------------------------------------------
    def fileno(self) -> int:
        """The stream's file descriptor (-1 once closed): poll it for POLLIN, then
        :meth:`pump`."""
        return self._fd

    @require(Runstate.CONNECTED, Runstate.READY)
    def pump(self) -> None:
        """Take in every reply that has already arrived. A virtio-serial port returns at most
        one 4 KiB buffer per read: keep reading while it has more, and while a frame is
        incomplete wait a little for the rest of it (it is on its way) rather than go back
        to the caller's loop once per 4 KiB."""
        self._read_available()
        while self._fd >= 0:
            wait = PARTIAL_FRAME_WAIT if self._decoder.buffered else 0.0
            if not self._poll(select.POLLIN, wait) & select.POLLIN:
                return
            self._read_available()

    def ready(self, request_id: int) -> bool:
        """Whether the reply to ``request_id`` is in: :meth:`result` will not wait."""
        return request_id in self._done

    @require(Runstate.CONNECTED, Runstate.READY)
    def result(self, request_id: int, timeout: float | None = 30.0) -> bytes:
        """Wait for the reply to ``request_id``; raise :class:`RemoteError` if it failed."""
        if request_id not in self._done:
            if request_id not in self._waiting:
                raise StateError(f"request {request_id} is not in flight")
            deadline = None if timeout is None else time.monotonic() + timeout
            if self._wait_any([request_id], deadline) is None:
                raise TransportTimeout(f"no reply to request {request_id} in {timeout} s")
        done = self._done.pop(request_id)
        if isinstance(done, wire.FrameError):
            raise RemoteError(done.op, request_id, done.code, f"reply dropped: {done.detail}")
        if done.flags & wire.ERROR:
            code, message = wire.decode_error(done.payload)
            raise RemoteError(done.op, request_id, code, message)
        return bytes(done.payload)

    def call(self, op: int, payload: bytes = b"", timeout: float | None = 30.0) -> bytes:
        return self.result(self.submit(op, payload), timeout)

    # ----- one-call helpers ----------------------------------------------------------------
    def ping(self, data: bytes = b"") -> bytes:
        return self.call(wire.Op.PING, data)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.call(wire.Op.STATS))
        return result

    def new_pool(self, flags: int, uuid: bytes = bytes(16), codec: str = "") -> int:
        request = wire.new_pool_request(flags, uuid, codec)
        return wire.parse_u32(self.call(wire.Op.NEW_POOL, request))

    def destroy_pool(self, pool_id: int) -> int:
        return wire.parse_u32(self.call(wire.Op.DESTROY_POOL, wire.u32(pool_id)))

    def put(self, pool_id: int, oid: wire.Oid, index: int, page: bytes) -> bool:
        reply = self.call(wire.Op.PUT, wire.key_request(pool_id, oid, index, page))
        return wire.parse_flags_reply(reply, 1)[0]

    def get(self, pool_id: int, oid: wire.Oid, index: int) -> bytes | None:
        reply = self.call(wire.Op.GET, wire.key_request(pool_id, oid, index))
        return reply or None

    def flush_page(self, pool_id: int, oid: wire.Oid, index: int) -> bool:
        reply = self.call(wire.Op.FLUSH_PAGE, wire.key_request(pool_id, oid, index))
        return wire.parse_flags_reply(reply, 1)[0]

    def flush_object(self, pool_id: int, oid: wire.Oid) -> int:
        return wire.parse_u32(self.call(wire.Op.FLUSH_OBJECT, wire.object_request(pool_id, oid)))

    def put_batch(
        self, pool_id: int, keys: Sequence[wire.Key], pages: Sequence[bytes]
    ) -> list[bool]:
        reply = self.call(wire.Op.PUT_BATCH, wire.batch_request(pool_id, keys, pages))
        return wire.parse_flags_reply(reply, len(keys))

    def get_batch(self, pool_id: int, keys: Sequence[wire.Key]) -> list[bytes | None]:
        reply = self.call(wire.Op.GET_BATCH, wire.batch_request(pool_id, keys))
        return wire.parse_get_batch_reply(reply, len(keys))

    def flush_batch(self, pool_id: int, keys: Sequence[wire.Key]) -> list[bool]:
        reply = self.call(wire.Op.FLUSH_BATCH, wire.batch_request(pool_id, keys))
        return wire.parse_flags_reply(reply, len(keys))

    # ----- stream plumbing -----------------------------------------------------------------
    def _submit(self, op: int, payload: wire.Payload | bytearray) -> int:
        rid = self._next_id
        self._next_id = rid + 1 if rid < 0xFFFFFFFF else 1
        self._waiting[rid] = op
        self._send([wire.encode_header(op, rid, payload), payload])
        return rid

    def _poll(self, events: int, timeout: float | None) -> int:
        self._poller.modify(self._fd, events)
        ready = self._poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        return ready[0][1] if ready else 0

    def _write_some(self, parts: list[memoryview]) -> int:
        """One writev of the first parts; on a port, in pieces of at most ``max_write``
        bytes (see :func:`port_pieces`)."""
        try:
            if self.max_write:
                return os.writev(self._fd, port_pieces(parts, self.max_write))
            return os.writev(self._fd, parts[:IOV_MAX])
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.close()
            raise ConnectionLost(f"write failed: {exc}") from exc

    def _send(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """Write ``parts`` in order (no joining: no large allocation), reading replies while
        the stream is full. A send that stalls closes the transport: the stream may end in
        a half-written frame, which nothing sent after it could follow."""
        views = [memoryview(p) for p in parts if len(p)]
        stalled_since = time.monotonic()
        while views:
            mask = self._poll(select.POLLIN | select.POLLOUT, 1.0)
            if mask & select.POLLIN:
                self._read_available()
            if mask & select.POLLOUT:
                sent = self._write_some(views)
                if sent:
                    stalled_since = time.monotonic()
                while sent:
                    if sent >= len(views[0]):
                        sent -= len(views.pop(0))
                    else:
                        views[0], sent = views[0][sent:], 0
            elif mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                self.close()
                raise ConnectionLost("stream closed while sending")
            if time.monotonic() - stalled_since > self.send_stall_timeout:
                self.close()
                raise TransportTimeout(
                    f"the daemon took nothing for {self.send_stall_timeout} s: closed")

    def _wait_any(self, request_ids: Sequence[int], deadline: float | None) -> int | None:
        while True:
            for rid in request_ids:
                if rid in self._done:
                    return rid
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if self._poll(select.POLLIN, left):
                self._read_available()

    def _read_available(self) -> None:
        while True:
            space = self._decoder.get_buffer()
            try:
                nbytes = os.readv(self._fd, self._read_pieces(space))
            except BlockingIOError:
                return
            except OSError as exc:
                self.close()
                raise ConnectionLost(f"read failed: {exc}") from exc
            if not nbytes:
                self.close()
                raise ConnectionLost("the daemon closed the stream")
            self._decoder.commit(nbytes)
            for event in self._decoder.pop_events():
                self._deliver(event)
            if nbytes < len(space):
                return

    def _read_pieces(self, space: memoryview) -> list[memoryview]:
        """The buffers of one readv: the whole space from a socket; from a port, pieces of
        one port buffer each, so that one call takes in many buffers (see
        :func:`port_pieces`)."""
        if not self.max_write:
            return [space]
        size = PORT_BUFFER
        return [space[i : i + size] for i in range(0, min(len(space), IOV_MAX * size), size)]

    def _deliver(self, event: wire.Frame | wire.FrameError) -> None:
        rid = event.request_id
        if isinstance(event, wire.Frame) and not event.flags & wire.REPLY:
            rid = None  # the daemon sends no requests
        if rid is None or rid not in self._waiting:
            if isinstance(event, wire.Frame):
                self.stray_frames += 1
            else:
                self.stream_errors += 1
            self.log.debug("ignored %s", event)
            return
        del self._waiting[rid]
        self._done[rid] = event


def greeted(make: Callable[[], Transport], vm: str, boot_id: bytes, session_id: bytes,
            timeout: float = GREETED_TIMEOUT_S, retry_every: float = 0.5) -> Transport:
    """An open transport from ``make`` whose hello was answered, for a tool that runs once.

    A virtio-serial port reads end of file while nobody holds its host side: QEMU connects
    its socket again about a second after the daemon closed it or restarted. A stream lost
    before the hello's reply is therefore made again, until ``timeout``; any other error is
    raised at once."""
    deadline = time.monotonic() + timeout
    while True:
        transport = make()
        try:
            transport.open()
            transport.hello(vm, boot_id, session_id,
                            timeout=max(retry_every, deadline - time.monotonic()))
            return transport
        except ConnectionLost as exc:
            transport.close()
            if time.monotonic() + retry_every >= deadline:
                raise ConnectionLost(f"{exc}; still so after {timeout:g} s") from exc
            log.info("stream lost before the hello was answered (%s): opening it again", exc)
            time.sleep(retry_every)
        except BaseException:
            transport.close()
            raise
