"""The VM server in-process over real unix sockets: shutdown, the connection cap (with its
BUSY error frame), the hello timeout and the decoder's memory per connection."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tmem_agent.channel import wire
from tmemd.service.server import ConnectionLimits
from tmemd.service.sessions import SessionRegistry
from tmemd.service.vmserver import VmServer
from tmemd.store.tmem import StoreConfig, TmemStore

pytestmark = pytest.mark.real


@pytest.fixture
def store() -> Iterator[TmemStore]:
    store = TmemStore(StoreConfig(memory_limit_bytes=8 << 20))
    yield store
    store.close()


class WaitsForConnections:
    """A listening server whose ``wait_closed`` behaves as since Python 3.12.1 (this test
    runs on 3.11): it returns only once the server is closed and every connection is gone.
    The body is 3.12.1's, over the same fields of 3.11's ``asyncio.Server``."""

    def __init__(self, inner: asyncio.AbstractServer) -> None:
        self.inner = inner

    def close(self) -> None:
        self.inner.close()

    async def wait_closed(self) -> None:
        inner: asyncio.base_events.Server = self.inner  # type: ignore[assignment]
        if inner._waiters is None:  # type: ignore[attr-defined]
            return
        waiter = asyncio.get_running_loop().create_future()
        inner._waiters.append(waiter)  # type: ignore[attr-defined]
        await waiter


def run_with_server(
    store: TmemStore, path: Path, body: Callable[[VmServer], Awaitable[None]],
    limits: ConnectionLimits | None = None,
) -> None:
    async def main() -> None:
        server = VmServer(store, SessionRegistry(store), os.urandom(16), limits,
                          vm_socket_dir=str(path.parent / "vms"))
        await server.start(str(path))
        try:
            await body(server)
        finally:
            await asyncio.wait_for(server.close(grace=0.5), 10)

    asyncio.run(main())


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.setblocking(False)
    return sock


def test_shutdown_closes_connections_before_waiting_for_the_server(
    store: TmemStore, tmp_path: Path,
) -> None:
    """An idle guest and one that stopped reading must not keep shutdown waiting."""
    path = tmp_path / "vm.sock"

    async def body(server: VmServer) -> None:
        loop = asyncio.get_running_loop()
        idle, stuck = client(path), client(path)
        try:
            await until(lambda: len(server.connections) == 2)
            big_ping = wire.encode_frame(wire.Op.PING, 1, bytes(wire.MAX_PAYLOAD))
            flood = loop.create_task(loop.sock_sendall(stuck, big_ping * 16))
            await until(lambda: any(c._writes_paused for c in server.connections))
            assert server._server is not None
            server._server = WaitsForConnections(server._server)  # type: ignore[assignment]
            await asyncio.wait_for(server.close(grace=0.5), 5)
            assert not server.connections and not path.exists()
            flood.cancel()
            assert await loop.sock_recv(idle, 10) == b""  # closed by the daemon
        finally:
            idle.close()
            stuck.close()

    run_with_server(store, path, body)


async def ping(sock: socket.socket, rid: int) -> bool:
    """Whether the daemon answers a ping on ``sock`` (False: it closed the stream)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, wire.encode_frame(wire.Op.PING, rid, b"hi"))
    decoder = wire.FrameDecoder()
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
        if not data:
            return False
        for event in decoder.feed(data):
            if isinstance(event, wire.Frame) and event.request_id == rid:
                return True


async def closed_by_peer(sock: socket.socket) -> bool:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 4096), 5) == b""
    except ConnectionResetError:  # closed with bytes of ours unread
        return True


async def refused_busy(sock: socket.socket) -> str:
    """The message of the BUSY error frame the daemon sends before closing ``sock``."""
    loop = asyncio.get_running_loop()
    decoder = wire.FrameDecoder()
    events: list[wire.Frame | wire.FrameError] = []
    while data := await asyncio.wait_for(loop.sock_recv(sock, 4096), 5):
        events.extend(decoder.feed(data))
    (event,) = events
    assert isinstance(event, wire.Frame) and event.flags == wire.ERROR_REPLY
    code, message = wire.decode_error(event.payload)
    assert code == wire.ErrorCode.BUSY
    return message


def test_connections_over_the_limit_are_closed_and_the_others_served(
    store: TmemStore, tmp_path: Path,
) -> None:
    path = tmp_path / "vm.sock"

    async def body(server: VmServer) -> None:
        socks = [client(path) for _ in range(3)]
        try:
            assert "2 connections already (the limit)" in await refused_busy(socks[2])
            assert await ping(socks[0], 1) and await ping(socks[1], 2)
            assert len(server.connections) == 2
            socks[0].close()
            await until(lambda: len(server.connections) == 1)
            socks.append(client(path))  # room again
            assert await ping(socks[3], 3)
        finally:
            for sock in socks:
                sock.close()

    run_with_server(store, path, body, ConnectionLimits(max_connections=2))


def test_a_stream_without_a_hello_is_closed_after_the_hello_timeout(
    store: TmemStore, tmp_path: Path,
) -> None:
    path = tmp_path / "vm.sock"
    hello = wire.encode_frame(wire.Op.HELLO, 9, wire.Hello("vm", bytes(16), bytes(16)).pack())

    async def body(server: VmServer) -> None:
        loop = asyncio.get_running_loop()
        silent, pinging, greeted = client(path), client(path), client(path)
        try:
            await loop.sock_sendall(greeted, hello)
            assert await ping(pinging, 1)  # a ping is served, but is no hello
            started = loop.time()
            assert await closed_by_peer(silent) and await closed_by_peer(pinging)
            assert loop.time() - started < 2
            assert await ping(greeted, 2)  # the hello reply came first; the stream stays
            assert len(server.connections) == 1
        finally:
            for sock in (silent, pinging, greeted):
                sock.close()

    run_with_server(store, path, body, ConnectionLimits(hello_timeout=0.3))


def test_on_a_vms_own_socket_the_hello_timeout_counts_from_the_first_byte(
    store: TmemStore, tmp_path: Path,
) -> None:
    """QEMU connects at VM start; the guest opens the port when it likes. The silent stream
    stays (closing it left a gap in which a guest opening the port found nobody); once a
    byte comes, hello must follow within the timeout."""
    path = tmp_path / "vm.sock"
    hello = wire.encode_frame(wire.Op.HELLO, 9, wire.Hello("vm1", bytes(16), bytes(16)).pack())

    async def body(server: VmServer) -> None:
        loop = asyncio.get_running_loop()
        vm_socket = Path((await server.admit("vm1"))["socket"])
        waiting, started_talking = client(vm_socket), client(vm_socket)
        try:
            await until(lambda: len(server.connections) == 2)
            await asyncio.sleep(0.8)  # well past the hello timeout
            assert len(server.connections) == 2
            await loop.sock_sendall(started_talking, hello[:5])  # a frame begun, never ended
            began = loop.time()
            assert await closed_by_peer(started_talking)
            assert 0.25 < loop.time() - began < 2
            await loop.sock_sendall(waiting, hello)  # the guest, late, but whole
            assert await ping(waiting, 2)
            assert len(server.connections) == 1
        finally:
            for sock in (waiting, started_talking):
                sock.close()

    run_with_server(store, path, body, ConnectionLimits(hello_timeout=0.3))


def test_a_stream_that_neither_reads_nor_says_hello_does_not_keep_its_slot(
    store: TmemStore, tmp_path: Path,
) -> None:
    path = tmp_path / "vm.sock"

    async def body(server: VmServer) -> None:
        loop = asyncio.get_running_loop()
        stuck = client(path)
        big_ping = wire.encode_frame(wire.Op.PING, 1, bytes(wire.MAX_PAYLOAD))
        flood = loop.create_task(loop.sock_sendall(stuck, big_ping * 16))
        try:
            await until(lambda: any(c._writes_paused for c in server.connections))
            await until(lambda: not server.connections, timeout=3)
        finally:
            flood.cancel()
            stuck.close()

    run_with_server(store, path, body, ConnectionLimits(hello_timeout=0.5))


def test_serve_options_for_the_limits_reach_the_daemon_and_bad_values_are_refused() -> None:
    import subprocess
    import sys

    from support.daemon import running_daemon

    bad = subprocess.run([sys.executable, "-m", "tmemd.cli", "serve", "--socket", "/nonexistent/s",
                          "--control", "/nonexistent/c", "--max-connections", "0",
                          "--hello-timeout", "-1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "--max-connections: 0 is out of range" in bad.stderr
    with running_daemon("--max-connections", "1", "--hello-timeout", "0.5") as daemon:
        with daemon.raw_socket() as first, daemon.raw_socket() as second:
            second.settimeout(5)
            frame = wire.encode_error(0, 0, wire.ErrorCode.BUSY,
                                      "refused: 1 connections already (the limit)")
            assert second.recv(len(frame) + 10) == frame  # over the limit: told why
            assert second.recv(10) == b""
            first.settimeout(5)
            assert first.recv(10) == b""  # no hello in time
        assert "refused: 1 connections already" in daemon.log_text()
        assert "no hello in 0.5 s" in daemon.log_text()


def test_readiness_does_not_depend_on_the_log_level() -> None:
    from support.daemon import running_daemon

    with running_daemon("--log-level", "warning") as daemon:
        assert "INFO" not in daemon.log_text()
        with daemon.transport() as agent:
            agent.hello("quiet", bytes(16), bytes(16))
            assert agent.ping(b"up") == b"up"
