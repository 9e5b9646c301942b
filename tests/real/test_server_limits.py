"""The VM server in-process over real unix sockets: shutdown, the connection cap, the hello
timeout and the decoder's memory per connection."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tmem_agent import wire
from tmemd.server import VmServer
from tmemd.sessions import SessionRegistry
from tmemd.tmem import StoreConfig, TmemStore

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
    store: TmemStore, path: Path, body: Callable[[VmServer], Awaitable[None]], **options: float,
) -> None:
    async def main() -> None:
        server = VmServer(store, SessionRegistry(store), os.urandom(16), **options)
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
