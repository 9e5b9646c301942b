"""Helpers shared by the control, statsview and metrics tests (this module holds no tests).

A real TmemStore behind a minimal daemon object, and a real control server on a unix socket,
run on an event loop in a background thread so that synchronous clients can talk to it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tmemd.service.control import start_control_server
from tmemd.service.sessions import SessionRegistry
from tmemd.service.vmserver import VmServer
from tmemd.store.tmem import StoreConfig, TmemStore

TEXT_PAGE = (b"tmem keeps evicted pages compressed in host memory. " * 80)[:4096]


class SmallDaemon:
    """A ControlTarget: a real store, a session registry with a detached session of client 1
    (vm1), a VM server that never listens on its own socket (admitted VMs' sockets go to
    ``vm_socket_dir``), and a shutdown counter."""

    def __init__(self, store: TmemStore, vm_socket_dir: str = "/nonexistent/tmemd-vms") -> None:
        self.store = store
        self.shutdown_requests = 0
        self.registry = SessionRegistry(store)
        if 1 in store.clients():
            self.registry.restore([{"vm": "vm1", "boot_id": "00" * 16, "client_id": 1}])
        self.server = VmServer(store, self.registry, bytes(16), vm_socket_dir=vm_socket_dir)
        self.sessions: list[dict[str, Any]] = self.registry.info()

    def sessions_info(self) -> list[dict[str, Any]]:
        return list(self.sessions)

    def request_shutdown(self) -> None:
        self.shutdown_requests += 1

    def forget_client(self, client_id: int) -> dict[str, Any]:
        self.store.destroy_client(client_id)
        return {"client_id": client_id, "forgotten": True}


def populated_store(pages: int = 8) -> TmemStore:
    """A 16 MiB store with clients vm1 (persistent pool 0 + ephemeral pool 1) and vm2."""
    store = TmemStore(StoreConfig(memory_limit_bytes=16 << 20))
    vm1 = store.new_client("vm1")
    persistent = store.new_pool(vm1, 1)
    ephemeral = store.new_pool(vm1, 0)
    for index in range(pages):
        assert store.put(vm1, persistent, (1, 0, 0), index, TEXT_PAGE[index:] + TEXT_PAGE[:index])
        assert store.put(vm1, ephemeral, (2, 0, 0), index, TEXT_PAGE)
    store.new_client("vm2", quota_bytes=1 << 20)
    return store


@contextmanager
def socket_dir() -> Iterator[str]:
    """A short private directory for sockets (unix socket paths must stay under 108 bytes)."""
    path = tempfile.mkdtemp(prefix="tmemctl-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def event_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread; stopped and closed on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def control_server_in_thread(daemon: SmallDaemon) -> Iterator[str]:
    """Serve ``daemon`` on a control socket from a background loop; yields the socket path."""
    with socket_dir() as directory, event_loop_thread() as loop:
        path = f"{directory}/control.sock"
        starting = asyncio.run_coroutine_threadsafe(start_control_server(path, daemon), loop)
        server = starting.result(5)
        try:
            yield path
        finally:

            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), loop).result(5)
