"""One NBD connection in the transmission phase, on a non-blocking socket.

The connection turns the byte stream into :class:`Request` objects and hands each to its
handler (the swap shim) the moment it is complete; the handler answers with :meth:`reply`,
in any order (simple replies carry the request's cookie). Page data never gets copied into
fresh Python objects: a write's payload is read straight into page slots of a
:class:`PagePool` allocated once, and a read's reply is sent straight from slots. When no
slots are free, the connection stops reading the socket until a reply frees some: the kernel
then holds its requests back (its queue is bounded), which is how the shim stays within the
memory it allocated at start.
"""

from __future__ import annotations

import collections
import logging
import mmap
import socket
import struct
import time
from typing import Protocol

from .nbdproto import REQUEST, REQUEST_MAGIC, SIMPLE_REPLY, SIMPLE_REPLY_MAGIC, Cmd, Err, Export

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
IOV_LIMIT = 128  # buffers per sendmsg / recvmsg_into
IN_BUFFER = 4096  # bytes read per call while looking for request headers
PAYLOAD_TIMEOUT = 10.0  # seconds a write's payload may take to arrive once its header has
DONTWAIT = socket.MSG_DONTWAIT


class PagePool:
    """``count`` page buffers in one anonymous mapping (page-aligned, so O_DIRECT can use
    them), touched once at start so they cost no page faults later."""

    def __init__(self, count: int) -> None:
        if count <= 0:
            raise ValueError("a page pool needs at least one page")
        self.count = count
        self._mm = mmap.mmap(-1, count * PAGE_SIZE)
        for off in range(0, count * PAGE_SIZE, PAGE_SIZE):
            self._mm[off] = 0  # fault every page in now
        whole = memoryview(self._mm)
        self.views = [whole[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(count)]
        self._free = list(range(count - 1, -1, -1))
        self.zero = memoryview(bytes(PAGE_SIZE))

    @property
    def available(self) -> int:
        return len(self._free)

    def take(self, n: int) -> list[int] | None:
        """``n`` slot numbers, or None when fewer are free."""
        free = self._free
        if n > len(free):
            return None
        taken = free[-n:]
        del free[-n:]
        return taken

    def give(self, slots: list[int]) -> None:
        self._free.extend(slots)


class Request:
    """One NBD request as received; ``slots`` hold its pages (a write's data, a read's reply).
    A handler may answer a read from elsewhere: ``data``, views whose bytes in order are the
    reply (e.g. pages of a tmem reply, sent without a copy into the slots)."""

    __slots__ = ("conn", "cookie", "cmd", "flags", "offset", "length", "slots", "started_ns",
                 "waiting", "error", "data")

    def __init__(self, conn: NbdConnection, cookie: int, cmd: int, flags: int, offset: int,
                 length: int) -> None:
        self.conn = conn
        self.cookie = cookie
        self.cmd = cmd
        self.flags = flags
        self.offset = offset
        self.length = length
        self.slots: list[int] = []
        self.started_ns = time.monotonic_ns()
        self.waiting = 0  # parts of the request still outstanding (the handler's count)
        self.error = 0  # the NBD error to answer with (0: success)
        self.data: list[memoryview] | None = None  # a read's reply, if not its slots

    @property
    def first_page(self) -> int:
        return self.offset // PAGE_SIZE

    @property
    def page_count(self) -> int:
        return self.length // PAGE_SIZE

    def reply_pages(self, views: list[memoryview]) -> list[memoryview]:
        """A read's reply as one view per page (``views``: its page pool's), to point some
        of them elsewhere: :attr:`data`, made from the slots' views the first time."""
        if self.data is None or len(self.data) != self.page_count:
            self.data = [views[slot] for slot in self.slots]
        return self.data

    def __repr__(self) -> str:
        return (f"<{Cmd(self.cmd).name if self.cmd in Cmd._value2member_map_ else self.cmd}"
                f" {self.offset}+{self.length} cookie {self.cookie:#x}>")


class Handler(Protocol):
    def handle(self, req: Request) -> None: ...

    def replied(self, req: Request) -> None: ...

    def connection_closed(self, conn: NbdConnection) -> None: ...


class NbdConnection:
    """The server's end of one NBD connection (transmission phase)."""

    def __init__(self, sock: socket.socket, export: Export, pool: PagePool,
                 handler: Handler) -> None:
        # The socket stays blocking: every call passes MSG_DONTWAIT except the one that reads
        # a write's payload, which waits for all of it (bounded by SO_RCVTIMEO).
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("@ll", int(PAYLOAD_TIMEOUT), 0))
        self.sock = sock
        self.fd = sock.fileno()  # the number stays known after close (for the poll set)
        self.export = export
        self.pool = pool
        self.handler = handler
        self.closed = False
        self.in_flight = 0  # requests handed to the handler and not yet fully replied
        # Requests are read in chunks of up to IN_BUFFER bytes: several headers per call, and
        # a short read tells that the socket is empty (no extra call only to learn EAGAIN).
        # Payload bytes that came with a header are copied to their slots from here.
        self._in = bytearray(IN_BUFFER)
        self._in_view = memoryview(self._in)
        self._in_start = 0
        self._in_end = 0
        self._socket_empty = False
        self._receiving: Request | None = None  # a write whose payload is arriving
        self._got = 0  # payload bytes of ``_receiving`` read so far
        self._discard = 0  # payload bytes of a refused write still to skip
        self._blocked: Request | None = None  # parsed, waiting for free slots
        self._disconnecting = False
        # each entry: views still to send, slots to free once sent, the request
        self._out: collections.deque[tuple[list[memoryview], list[int], Request]] = \
            collections.deque()
        self._scratch = memoryview(bytearray(PAGE_SIZE))
        # While set (the event loop sets it for one turn), replies are queued, not sent:
        # the turn's replies then leave together in one sendmsg (see release_replies).
        self.hold_replies = False

    def fileno(self) -> int:
        return self.sock.fileno() if not self.closed else -1

    @property
    def wants_read(self) -> bool:
        return not self.closed and not self._disconnecting and self._blocked is None

    @property
    def wants_write(self) -> bool:
        return not self.closed and bool(self._out)

    # ----- receiving -----------------------------------------------------------------------
    def on_readable(self) -> None:
        """Read and dispatch every complete request the socket holds now."""
        self._socket_empty = False
        try:
            while self.wants_read:
                if self._discard:
                    if not self._skip_payload():
                        return
                elif self._receiving is not None:
                    if not self._read_payload():
                        return
                elif not self._read_header():
                    return
        except OSError as exc:
            log.warning("NBD connection failed while reading: %s", exc)
            self.close()

    def _recv(self, buffers: list[memoryview], flags: int = DONTWAIT) -> int:
        """Bytes read into ``buffers`` (0: nothing yet). Closes the connection at EOF."""
        try:
            nbytes = self.sock.recvmsg_into(buffers, 0, flags)[0]
        except (BlockingIOError, InterruptedError):
            return 0
        if nbytes == 0:
            log.info("NBD client closed the connection")
            self.close()
        return nbytes

    def _fill(self) -> bool:
        """Read what the socket has into the input buffer; False if nothing came (or the
        last read already found the socket empty)."""
        if self._socket_empty:
            return False
        if self._in_start:
            left = self._in_end - self._in_start
            self._in_view[:left] = self._in_view[self._in_start : self._in_end]
            self._in_start, self._in_end = 0, left
        space = self._in_view[self._in_end :]
        got = self._recv([space])
        self._in_end += got
        self._socket_empty = got < len(space)
        return got > 0

    def _take_input(self, into: list[memoryview], offset: int, count: int) -> None:
        """Copy ``count`` buffered bytes into the pages ``into``, from byte ``offset``."""
        data, at = self._in_view, self._in_start
        self._in_start += count
        while count:
            page, within = divmod(offset, PAGE_SIZE)
            chunk = min(count, PAGE_SIZE - within)
            into[page][within : within + chunk] = data[at : at + chunk]
            at += chunk
            offset += chunk
            count -= chunk

    def _read_header(self) -> bool:
        if self._in_end - self._in_start < REQUEST.size and not self._fill():
            return False
        if self._in_end - self._in_start < REQUEST.size:
            return True  # the rest of the header is on its way
        at = self._in_start
        self._in_start += REQUEST.size
        magic, flags, cmd, cookie, offset, length = REQUEST.unpack_from(self._in, at)
        if magic != REQUEST_MAGIC:
            log.error("NBD request with bad magic %#x: closing the connection", magic)
            self.close()
            return False
        self._start(Request(self, cookie, cmd, flags, offset, length))
        return True

    def _start(self, req: Request) -> None:
        error = self._check(req)
        if error:
            if req.cmd == Cmd.WRITE:
                self._discard = req.length
            self.in_flight += 1
            req.error = error
            self.reply(req)
            return
        if req.cmd == Cmd.DISC:
            log.info("NBD client asked to disconnect")
            self._disconnecting = True
            self._close_if_done()
            return
        if req.cmd in (Cmd.READ, Cmd.WRITE) and not self._take_slots(req):
            return
        self._dispatch(req)

    def _check(self, req: Request) -> int:
        """The error a request must be answered with at once (0: none)."""
        if req.cmd not in (Cmd.READ, Cmd.WRITE, Cmd.DISC, Cmd.FLUSH, Cmd.TRIM,
                           Cmd.WRITE_ZEROES):
            return Err.EINVAL
        if req.cmd in (Cmd.DISC, Cmd.FLUSH):
            return 0
        if req.offset % PAGE_SIZE or req.length % PAGE_SIZE:
            return Err.EINVAL
        if req.offset + req.length > self.export.size:
            return Err.ENOSPC if req.cmd == Cmd.WRITE else Err.EINVAL
        if req.cmd in (Cmd.READ, Cmd.WRITE) and not 0 < req.page_count <= self.pool.count:
            return Err.EINVAL  # larger than every slot together: the device says so
        return 0

    def _take_slots(self, req: Request) -> bool:
        slots = self.pool.take(req.page_count)
        if slots is None:
            self._blocked = req  # resumed by retry_blocked() once replies free slots
            return False
        req.slots = slots
        return True

    def _dispatch(self, req: Request) -> None:
        if req.cmd == Cmd.WRITE:
            self._receiving, self._got = req, 0
            return
        self.in_flight += 1
        self.handler.handle(req)

    def retry_blocked(self) -> None:
        """Continue with a request that waited for slots, if enough are free now."""
        req = self._blocked
        if req is None or self.closed or self.pool.available < req.page_count:
            return
        self._blocked = None
        if self._take_slots(req):
            self._dispatch(req)
            if self._in_end > self._in_start:
                self.on_readable()  # what was read ahead of the block: no poll will say so

    def _read_payload(self) -> bool:
        req = self._receiving
        assert req is not None
        views = self.pool.views
        buffered = min(self._in_end - self._in_start, req.length - self._got)
        if buffered:
            self._take_input([views[s] for s in req.slots], self._got, buffered)
            self._got += buffered
            if self._got == req.length:
                self._receiving = None
                self.in_flight += 1
                self.handler.handle(req)
                return True
        first, within = divmod(self._got, PAGE_SIZE)
        buffers = [views[req.slots[first]][within:]]
        buffers += [views[s] for s in req.slots[first + 1 : first + IOV_LIMIT]]
        # The payload is on its way: wait for all of it in one call. Returning to the loop
        # after each piece would cost a turn of the loop per page, as this real-time process
        # wakes up the moment the kernel has queued the first bytes.
        got = self._recv(buffers, socket.MSG_WAITALL)
        if not got:
            return False
        self._got += got
        if self._got == req.length:
            self._receiving = None
            self.in_flight += 1
            self.handler.handle(req)
        return True

    def _skip_payload(self) -> bool:
        buffered = min(self._in_end - self._in_start, self._discard)
        if buffered:
            self._in_start += buffered
            self._discard -= buffered
            return True
        got = self._recv([self._scratch[: min(self._discard, PAGE_SIZE)]])
        self._discard -= got
        return got > 0

    # ----- replying ------------------------------------------------------------------------
    def reply(self, req: Request) -> None:
        """Queue the reply to ``req`` (its ``error``; a read's data from its slots)."""
        if self.closed:
            self._finish(req, req.slots)
            return
        head = memoryview(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, req.error, req.cookie))
        views = [head]
        if req.cmd == Cmd.READ and not req.error:
            views += req.data if req.data is not None else [self.pool.views[s] for s in req.slots]
        self._out.append((views, req.slots, req))
        if not self.hold_replies:
            self.on_writable()

    def release_replies(self) -> None:
        """Stop holding replies and send what is queued."""
        self.hold_replies = False
        if self._out:
            self.on_writable()

    def on_writable(self) -> None:
        """Send queued replies until the socket is full."""
        out = self._out
        try:
            while out and not self.closed:
                views: list[memoryview] = []
                for entry in out:
                    views += entry[0]
                    if len(views) >= IOV_LIMIT:
                        break
                try:
                    sent = self.sock.sendmsg(views[:IOV_LIMIT], [], DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                while sent:
                    pending = out[0][0]
                    if sent >= len(pending[0]):
                        sent -= len(pending.pop(0))
                    else:
                        pending[0] = pending[0][sent:]
                        sent = 0
                    if not pending:
                        _, slots, req = out.popleft()
                        self._finish(req, slots)
                while out and not out[0][0]:  # zero-length leftovers
                    _, slots, req = out.popleft()
                    self._finish(req, slots)
        except OSError as exc:
            log.warning("NBD connection failed while replying: %s", exc)
            self.close()
        self._close_if_done()

    def _finish(self, req: Request, slots: list[int]) -> None:
        if slots:
            self.pool.give(slots)
            req.slots = []
        self.in_flight -= 1
        self.handler.replied(req)

    def _close_if_done(self) -> None:
        if self._disconnecting and not self.in_flight and not self._out and not self.closed:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        finally:
            while self._out:
                _, slots, req = self._out.popleft()
                self._finish(req, slots)
            for unfinished in (self._receiving, self._blocked):
                if unfinished is not None and unfinished.slots:
                    self.pool.give(unfinished.slots)
                    unfinished.slots = []
            self._receiving = self._blocked = None
            self.handler.connection_closed(self)
