"""Where guests connect: the operator's socket, the admitted VMs' own sockets, and every
live connection (each a :class:`~tmemd.service.server.VmConnection`).

The operator's socket (``--socket``) is created mode 0600: only root's trusted tools (loadgen,
tests) reach it, and their hellos name their VM, except a VM admitted to a socket of its own.
An admitted VM's socket (:mod:`.vmsockets`) binds every connection on it to that VM. See
docs/trust-model.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tmem_agent.channel import wire

from ..store.errors import TmemError
from .config import DEFAULT_VM_SOCKET_DIR
from .limits import ConnectionLimits
from .server import VmConnection
from .sessions import SessionRegistry
from .unixsock import claim_socket_path
from .vmsockets import VmSockets, resolve_owner

if TYPE_CHECKING:
    from ..store.tmem import TmemStore

log = logging.getLogger(__name__)

SOCKET_MODE = 0o600  # the operator's socket: root's trusted tools only


class SocketInUse(OSError):
    """The VM socket path belongs to a live server or is not a socket."""


class VmServer:
    """The operator's socket, the admitted VMs' sockets, and every live connection."""

    def __init__(
        self, store: TmemStore, registry: SessionRegistry, instance_id: bytes,
        limits: ConnectionLimits | None = None, vm_socket_dir: str = DEFAULT_VM_SOCKET_DIR,
    ) -> None:
        self.store = store
        self.registry = registry
        self.instance_id = instance_id
        self.limits = limits or ConnectionLimits()
        self.connections: set[VmConnection] = set()
        self.vm_sockets = VmSockets(vm_socket_dir, self._vm_connection_factory)
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None
        self._inode = 0
        self._count = 0

    async def start(self, path: str) -> None:
        """Listen on the operator's socket ``path``, then for every admitted VM (admissions
        restored from a state file); a VM whose socket cannot be made is logged and skipped."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
        claim_socket_path(path, "VM socket", SocketInUse)
        loop = asyncio.get_running_loop()
        old_umask = os.umask(0o177)  # bound in this call, before any await: never open to all
        try:
            self._server = await loop.create_unix_server(self._new_connection, path)
        finally:
            os.umask(old_umask)
        os.chmod(path, SOCKET_MODE)
        self._path, self._inode = path, os.stat(path).st_ino
        log.info("serving trusted tools on %s", path)
        for admission in self.registry.admissions():
            try:
                admission.socket = await self.vm_sockets.listen(admission.vm, admission.owner)
            except TmemError as exc:
                log.error("admitted vm %s gets no socket: %s", admission.vm, exc)

    def _new_connection(self, socket_vm: str | None = None) -> VmConnection:
        self._count += 1
        return VmConnection(self, self._count, socket_vm)

    def _vm_connection_factory(self, vm: str) -> Callable[[], VmConnection]:
        return lambda: self._new_connection(vm)

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.connections), "connections_total": self._count}

    # ----- admissions ----------------------------------------------------------------------
    async def admit(self, vm: str, owner: str | int | None = None) -> dict[str, Any]:
        """Listen on a socket of ``vm``'s own (given to ``owner``) and return its path.

        Admitting again keeps the socket and updates its owner. Connections of the
        operator's socket that drive the VM are closed: from now on only its socket may.
        A failure changes nothing."""
        uid = resolve_owner(owner)
        path = await self.vm_sockets.listen(vm, uid)
        admission = self.registry.admit(vm, uid)
        admission.socket = path
        for conn in self._driving(vm, on_vm_socket=False):
            conn.refuse(wire.ErrorCode.WRONG_VM, f"vm {vm} was admitted to a socket of its own")
        return {"vm": vm, "socket": path, "owner": uid}

    async def dismiss(self, vm: str) -> dict[str, Any]:
        """Stop listening for ``vm`` and close its connections; its session and pages stay
        until forgotten (or until it is admitted again and resumes)."""
        self.registry.dismiss(vm)  # NotAdmitted: nothing changes
        server = self.vm_sockets.stop(vm)
        closing = [c for c in self.connections if c.socket_vm == vm]
        for conn in closing:
            conn.abort()
        if server is not None:
            await server.wait_closed()
        return {"vm": vm, "dismissed": True, "connections_closed": len(closing)}

    def _driving(self, vm: str, on_vm_socket: bool) -> list[VmConnection]:
        return [c for c in self.connections if c.session is not None and c.session.vm == vm
                and (c.socket_vm is not None) == on_vm_socket]

    async def close(self, grace: float = 2.0) -> None:
        """Stop listening and close every connection, then remove our socket.

        Connections are closed before waiting for the server: since Python 3.12.1
        ``wait_closed`` waits for every connection, so it would otherwise never return. A
        connection whose peer does not take its pending replies within ``grace`` seconds is
        aborted."""
        if self._server is not None:
            self._server.close()
        vm_servers = self.vm_sockets.stop_all()  # the admissions stay in the registry
        await self._close_connections(grace)
        for server in vm_servers:
            await server.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._path is not None:
            try:
                if os.stat(self._path).st_ino == self._inode:  # still ours, not a successor's
                    os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None

    async def _close_connections(self, grace: float) -> None:
        for conn in list(self.connections):
            conn.close()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # closed transports flush their replies, then go
        for conn in list(self.connections):
            conn.log.warning("replies not taken in %.1f s: aborting the connection", grace)
            conn.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run
