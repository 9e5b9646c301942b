"""The agent's event loop: one thread, one poll() over every descriptor the swap path uses.

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
from typing import Any

from ..wakepipe import WakePipe
from .nbdconn import NbdConnection, PagePool
from .nbdproto import Export, HandshakeError, serve_handshake
from .shim import SwapShim

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


class SwapServer:
    """The loop around a :class:`SwapShim`."""

    def __init__(self, shim: SwapShim, export: Export, pool: PagePool, *,
                 nbd_path: str | None = None, status_path: str | None = None,
                 status_extra: Callable[[], dict[str, Any]] = dict) -> None:
        self.shim = shim
        self.export = export
        self.pool = pool
        self.status_extra = status_extra
        self.connections: list[NbdConnection] = []
        self.nbd_listener = listen_unix(nbd_path) if nbd_path else None
        self.status_listener = listen_unix(status_path) if status_path else None
        self._paths = [p for p in (nbd_path, status_path) if p]
        self._children: list[tuple[subprocess.Popen[bytes], ChildDone]] = []
        self._wake = WakePipe()
        self._poller = select.poll()
        self._registered: dict[int, int] = {}
        self._link_fd = -1
        self._stopping = False
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self.on_connection_closed: Callable[[NbdConnection], None] = lambda conn: None

    # ----- what the service adds -----------------------------------------------------------
    def add_connection(self, sock: socket.socket) -> NbdConnection:
        """Serve ``sock``, already in the transmission phase (e.g. a socketpair end whose
        other end the kernel was given)."""
        conn = NbdConnection(sock, self.export, self.pool, self.shim)
        self.connections.append(conn)
        self.shim.stats.add("nbd_connections")
        return conn

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
        link = self.shim.link
        link_fd = link.fileno()
        fallback_fd = self.shim.fallback.fileno()
        held = list(self.connections)  # replies of this turn go out together, at its end
        for conn in held:
            conn.hold_replies = True
        for fd, mask in events:
            if fd == self._wake.fileno():
                self._wake.drain()
            elif fd == fallback_fd:
                self.shim.fallback.complete()
            elif fd == link_fd:
                link.on_readable()
            elif self.nbd_listener is not None and fd == self.nbd_listener.fileno():
                self._accept_nbd()
            elif self.status_listener is not None and fd == self.status_listener.fileno():
                self._answer_status()
            else:
                self._serve_connection(fd, mask)
        self.shim.submit_queued()
        for conn in held:
            conn.release_replies()
        now = time.monotonic()
        link.tick(now)
        self.shim.tick(now)
        self._unblock()
        self._reap_children()
        while self._timers and self._timers[0][0] <= now:
            self._timers.pop(0)[1]()

    def _timeout(self, now: float, max_wait: float) -> float:
        wait = max_wait
        for due in (self.shim.link.next_deadline(), self.shim.next_deadline(),
                    self._timers[0][0] if self._timers else None):
            if due is not None and due - now < wait:
                wait = due - now
        if self._children and wait > CHILD_POLL_S:
            wait = CHILD_POLL_S
        return wait if wait > 0 else 0.0

    def _register(self) -> None:
        """Bring the poll set up to date: the fixed descriptors once, then only the stream
        to tmemd (it changes on reconnects) and each connection's read/write interest."""
        registered, poller = self._registered, self._poller
        if not registered:
            for fd in (self._wake.fileno(), self.shim.fallback.fileno()):
                poller.register(fd, select.POLLIN)
                registered[fd] = select.POLLIN
            for listener in (self.nbd_listener, self.status_listener):
                if listener is not None:
                    poller.register(listener.fileno(), select.POLLIN)
                    registered[listener.fileno()] = select.POLLIN
        link_fd = self.shim.link.fileno()
        if link_fd != self._link_fd:
            old, self._link_fd = self._link_fd, link_fd
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
        if fd == self._link_fd and fd == self.shim.link.fileno():
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
        for conn in closed:
            if conn.fd != self._link_fd:
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
            export = serve_handshake(sock, {self.export.name: self.export})
        except HandshakeError as exc:
            log.warning("NBD handshake failed: %s", exc)
            sock.close()
            return
        if export is None:
            sock.close()
            return
        log.info("NBD client attached to export %r (%d bytes)", export.name, export.size)
        self.add_connection(sock)

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
        extra = {"nbd_connections_open": len(self.connections),
                 "slots_free": self.pool.available, "slots": self.pool.count,
                 "tmem_in_flight": self.shim.link.in_flight}
        extra.update(self.status_extra())
        return self.shim.stats.snapshot(extra)

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
