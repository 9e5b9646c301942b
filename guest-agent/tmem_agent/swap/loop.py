"""The agent's event loop: one thread, one poll() over every descriptor the block devices use.

The loop serves one or more *parts* (:class:`Part`): a block device with its NBD export, its
request handler, its page slots and its link to tmemd (the swap shim; a disk cache of
:mod:`tmem_agent.cache`). Parts may share one link (one stream to tmemd per guest).
It serves the NBD listening socket (a client such as ``nbd-client`` does the handshake there,
then hands the socket to the kernel), the NBD connections in the transmission phase, the
stream to tmemd, a status socket (each connection gets the counters as one JSON document and
is closed), a wake-up pipe for stopping, and the set-up commands the service runs meanwhile
(``nbd-client``, ``mkswap``, ``swapon``: they do I/O on the device this loop serves, so they
must run while it turns). Nothing here blocks for long except a handshake (bounded) and a
reconnect's hello (bounded).
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..wakepipe import WakePipe
from .nbdconn import Handler, NbdConnection, PagePool
from .nbdproto import Export, HandshakeError, serve_handshake
from .shim import SwapShim
from .tmemlink import TmemLink

log = logging.getLogger(__name__)

CHILD_POLL_S = 0.05  # how often running set-up commands are checked
IDLE_POLL_S = 5.0  # the longest a poll waits when nothing is due

ChildDone = Callable[[int, str], None]


def listen_unix(path: str, backlog: int = 4) -> socket.socket:
    """A listening unix socket at ``path`` (a stale socket file is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class Part(Protocol):
    """One block device the loop serves: what the loop needs of it."""

    export: Export
    pool: PagePool  # the page slots of its connections
    handler: Handler  # its connections' requests
    link: TmemLink  # its stream to tmemd (parts may share one)

    def readers(self) -> list[tuple[int, Callable[[], None]]]:
        """Descriptors to wait on for reading, with what to run when one is readable (fixed
        for the part's life: e.g. its disk workers' completion pipe)."""
        ...

    def after_events(self) -> None:
        """The turn's events are served (e.g. send the puts they gathered)."""
        ...

    def tick(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def connection_added(self) -> None: ...


class SwapPart:
    """The swap shim as a :class:`Part`."""

    def __init__(self, shim: SwapShim, export: Export, pool: PagePool) -> None:
        self.shim, self.export, self.pool = shim, export, pool
        self.handler: Handler = shim
        self.link = shim.link

    def readers(self) -> list[tuple[int, Callable[[], None]]]:
        return [(self.shim.fallback.fileno(), self.shim.fallback.complete)]

    def after_events(self) -> None:
        self.shim.submit_queued()

    def tick(self, now: float) -> None:
        self.shim.tick(now)

    def next_deadline(self) -> float | None:
        return self.shim.next_deadline()

    def connection_added(self) -> None:
        self.shim.stats.add("nbd_connections")


class BlockServer:
    """The loop around one or more :class:`Part`; ``status`` makes the status document."""

    def __init__(self, parts: list[Part], *, nbd_path: str | None = None,
                 status_path: str | None = None,
                 status: Callable[[], dict[str, Any]] = dict) -> None:
        if not parts:
            raise ValueError("a server needs a part to serve")
        self.parts: list[Part] = []
        self._status = status
        self.connections: list[NbdConnection] = []
        self.nbd_listener = listen_unix(nbd_path) if nbd_path else None
        self.status_listener = listen_unix(status_path) if status_path else None
        self._paths = [p for p in (nbd_path, status_path) if p]
        self._children: list[tuple[subprocess.Popen[bytes], ChildDone]] = []
        self._wake = WakePipe()
        self._poller = select.poll()
        self._registered: dict[int, int] = {}
        self._readers: dict[int, Callable[[], None]] = {}
        self._links: list[TmemLink] = []
        self._link_fds: dict[int, int] = {}  # id(link) -> its descriptor as registered
        self._stopping = False
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self.on_connection_closed: Callable[[NbdConnection], None] = lambda conn: None
        for part in parts:
            self.add_part(part)

    def add_part(self, part: Part) -> None:
        """Serve another block device (its export joins the NBD listener's)."""
        if any(p.export.name == part.export.name for p in self.parts):
            raise ValueError(f"two parts export {part.export.name!r}")
        self.parts.append(part)
        if all(link is not part.link for link in self._links):
            self._links.append(part.link)
            self._link_fds[id(part.link)] = -1
        for fd, callback in part.readers():
            self._readers[fd] = callback

    # ----- what the service adds -----------------------------------------------------------
    def add_connection(self, sock: socket.socket, export: str | None = None) -> NbdConnection:
        """Serve ``sock``, already in the transmission phase (e.g. a socketpair end whose
        other end the kernel was given), as ``export`` (default: the first part's)."""
        part = self.part(export)
        conn = NbdConnection(sock, part.export, part.pool, part.handler)
        self.connections.append(conn)
        part.connection_added()
        return conn

    def part(self, export: str | None = None) -> Part:
        """The part serving ``export`` (None: the first)."""
        if export is None:
            return self.parts[0]
        for part in self.parts:
            if part.export.name == export:
                return part
        raise KeyError(f"no export named {export!r}")

    def spawn(self, argv: list[str], done: ChildDone) -> None:
        """Run a command while the loop keeps serving; ``done(returncode, output)`` after."""
        log.info("running %s", " ".join(argv))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        self._children.append((proc, done))

    def call_later(self, delay: float, func: Callable[[], None]) -> None:
        """Run ``func`` from the loop in ``delay`` seconds."""
        self._timers.append((time.monotonic() + delay, func))
        self._timers.sort(key=lambda timer: timer[0])

    def stop(self) -> None:
        """Make :meth:`run` return (safe from a signal handler or another thread)."""
        self._stopping = True
        self._wake.wake()

    # ----- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        while not self._stopping:
            self.step()

    def step(self, max_wait: float = IDLE_POLL_S) -> None:
        """One turn: wait for events (or the next deadline), then serve them."""
        now = time.monotonic()
        self._register()
        events = self._poller.poll(max(0, int(self._timeout(now, max_wait) * 1000)))
        links = {link.fileno(): link for link in self._links}
        readers = self._readers
        held = list(self.connections)  # replies of this turn go out together, at its end
        for conn in held:
            conn.hold_replies = True
        for fd, mask in events:
            if fd == self._wake.fileno():
                self._wake.drain()
            elif fd in readers:
                readers[fd]()
            elif fd in links:
                links[fd].on_readable()
            elif self.nbd_listener is not None and fd == self.nbd_listener.fileno():
                self._accept_nbd()
            elif self.status_listener is not None and fd == self.status_listener.fileno():
                self._answer_status()
            else:
                self._serve_connection(fd, mask)
        for part in self.parts:
            part.after_events()
        for conn in held:
            conn.release_replies()
        now = time.monotonic()
        for link in self._links:
            link.tick(now)
        for part in self.parts:
            part.tick(now)
        self._unblock()
        self._reap_children()
        while self._timers and self._timers[0][0] <= now:
            self._timers.pop(0)[1]()

    def _timeout(self, now: float, max_wait: float) -> float:
        wait = max_wait
        dues = [link.next_deadline() for link in self._links]
        dues += [part.next_deadline() for part in self.parts]
        dues.append(self._timers[0][0] if self._timers else None)
        for due in dues:
            if due is not None and due - now < wait:
                wait = due - now
        if self._children and wait > CHILD_POLL_S:
            wait = CHILD_POLL_S
        return wait if wait > 0 else 0.0

    def _register(self) -> None:
        """Bring the poll set up to date: the fixed descriptors once, then the streams to
        tmemd (they change on reconnects) and each connection's read/write interest."""
        registered, poller = self._registered, self._poller
        fixed = [self._wake.fileno(), *self._readers]
        fixed += [lis.fileno() for lis in (self.nbd_listener, self.status_listener)
                  if lis is not None]
        for fd in fixed:
            if fd not in registered:
                poller.register(fd, select.POLLIN)
                registered[fd] = select.POLLIN
        for link in self._links:
            link_fd = link.fileno()
            if link_fd != self._link_fds[id(link)]:
                old, self._link_fds[id(link)] = self._link_fds[id(link)], link_fd
                self._forget_fd(old)
                if link_fd >= 0:
                    poller.register(link_fd, select.POLLIN)
                    registered[link_fd] = select.POLLIN
        for conn in self.connections:
            mask = (select.POLLIN if conn.wants_read else 0) | (
                select.POLLOUT if conn.wants_write else 0)
            if registered.get(conn.fd) != mask:
                poller.register(conn.fd, mask)  # registering again modifies
                registered[conn.fd] = mask

    def _forget_fd(self, fd: int) -> None:
        """Drop a closed descriptor from the poll set, unless its number is in use again (a
        new connection or stream may have been given the same number)."""
        if any(fd == self._link_fds[id(link)] == link.fileno() for link in self._links):
            return
        if any(conn.fd == fd and not conn.closed for conn in self.connections):
            return
        if self._registered.pop(fd, None) is not None:
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass

    def _serve_connection(self, fd: int, mask: int) -> None:
        for conn in self.connections:
            if conn.fd == fd:
                if mask & select.POLLOUT:
                    conn.on_writable()
                if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    conn.on_readable()
                if mask & select.POLLNVAL:
                    conn.close()
                break
        self._drop_closed()

    def _unblock(self) -> None:
        for conn in self.connections:
            conn.retry_blocked()
        self._drop_closed()

    def _drop_closed(self) -> None:
        for conn in self.connections:
            if conn.closed:
                break
        else:
            return
        closed = [c for c in self.connections if c.closed]
        self.connections = [c for c in self.connections if not c.closed]
        link_fds = set(self._link_fds.values())
        for conn in closed:
            if conn.fd not in link_fds:
                self._forget_fd(conn.fd)
            self.on_connection_closed(conn)

    def _accept_nbd(self) -> None:
        assert self.nbd_listener is not None
        try:
            sock, _ = self.nbd_listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        try:
            export = serve_handshake(sock, {p.export.name: p.export for p in self.parts})
        except HandshakeError as exc:
            log.warning("NBD handshake failed: %s", exc)
            sock.close()
            return
        if export is None:
            sock.close()
            return
        log.info("NBD client attached to export %r (%d bytes)", export.name, export.size)
        self.add_connection(sock, export.name)

    def _answer_status(self) -> None:
        assert self.status_listener is not None
        try:
            sock, _ = self.status_listener.accept()
        except BlockingIOError:
            return
        with sock:
            sock.settimeout(1.0)
            try:
                sock.sendall(json.dumps(self.status(), default=str).encode() + b"\n")
            except OSError as exc:
                log.info("status reader went away: %s", exc)

    def status(self) -> dict[str, Any]:
        return self._status()

    def _reap_children(self) -> None:
        if not self._children:
            return
        current, self._children = self._children, []
        running = []
        for proc, done in current:
            code = proc.poll()
            if code is None:
                running.append((proc, done))
                continue
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            if proc.stdout:
                proc.stdout.close()
            done(code, output)  # may spawn the next command
        self._children = running + self._children

    @property
    def children_running(self) -> int:
        return len(self._children)

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        self.connections = []
        for listener in (self.nbd_listener, self.status_listener):
            if listener is not None:
                listener.close()
        for path in self._paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        for proc, _ in self._children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._wake.close()


class SwapServer(BlockServer):
    """The loop around a :class:`SwapShim` (and any further parts added)."""

    def __init__(self, shim: SwapShim, export: Export, pool: PagePool, *,
                 nbd_path: str | None = None, status_path: str | None = None,
                 status_extra: Callable[[], dict[str, Any]] = dict) -> None:
        self.shim = shim
        self.export = export
        self.pool = pool
        self.status_extra = status_extra
        super().__init__([SwapPart(shim, export, pool)], nbd_path=nbd_path,
                         status_path=status_path)

    def status(self) -> dict[str, Any]:
        extra = {"nbd_connections_open": len(self.connections),
                 "slots_free": self.pool.available, "slots": self.pool.count,
                 "tmem_in_flight": self.shim.link.in_flight}
        extra.update(self.status_extra())
        return self.shim.stats.snapshot(extra)
