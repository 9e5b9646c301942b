"""Which VM is which: VM identity, boot id and the resume rules of the hello handshake.

Each VM (named in its hello) owns one tmem client. When a hello arrives:

- an unknown VM gets a new client ("fresh");
- a known VM with the same boot id (its agent restarted, or the daemon restarted from a state
  file) gets its client and pools back ("resumed");
- a known VM with another boot id has rebooted: its old client and every page are dropped and
  it gets a new client ("fresh"), so it can never read data from its previous life. That
  holds on the connection already driving the VM (QEMU keeps the chardev connected across a
  guest reboot) or when the VM has no live connection; a *different* connection with another
  boot id while the VM's own connection is live is refused (:class:`VmNameInUse`): it is not
  that VM, and must not wipe its data by naming it.

At most one connection drives a session; a newer connection for the same VM and boot id
supersedes the older one (QEMU reconnects the chardev socket while the old end may not have
closed yet).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tmem_agent.channel import wire

from ..store.errors import TmemError

if TYPE_CHECKING:
    from ..store.tmem import TmemStore

log = logging.getLogger(__name__)


class Attachment(Protocol):
    """What a session needs from the connection that drives it."""

    peer: str

    def supersede(self) -> None:
        """Another connection took over this VM: stop serving it."""

    def is_live(self) -> bool:
        """The stream is open and served (not closing or closed)."""


class VmNameInUse(Exception):
    """A hello named a VM whose live connection is another one, with another boot id."""


class VmConnected(TmemError):
    """A VM that is still connected cannot be forgotten."""


@dataclass
class Session:
    vm: str
    boot_id: bytes
    agent_session: bytes
    client_id: int
    connection: Attachment | None = None
    connected_since: float | None = None
    frames_in: int = 0
    frames_out: int = 0
    errors: int = 0
    resumes: int = 0
    created: float = field(default_factory=time.time)

    def info(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "boot_id": self.boot_id.hex(),
            "agent_session": self.agent_session.hex(),
            "client_id": self.client_id,
            "peer": self.connection.peer if self.connection else None,
            "connected": self.connection is not None,
            "connected_since": self.connected_since,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "errors": self.errors,
            "resumes": self.resumes,
        }

    def record(self) -> dict[str, Any]:
        """What the state file keeps to recognise the VM after a daemon restart."""
        return {
            "vm": self.vm,
            "boot_id": self.boot_id.hex(),
            "agent_session": self.agent_session.hex(),
            "client_id": self.client_id,
        }


class SessionRegistry:
    """Sessions by VM name, over one store."""

    def __init__(self, store: TmemStore, default_quota: int | None = None) -> None:
        self.store = store
        self.default_quota = default_quota
        self._by_vm: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_vm)

    def get(self, vm: str) -> Session | None:
        return self._by_vm.get(vm)

    def attach(self, hello: wire.Hello, conn: Attachment) -> tuple[Session, wire.HelloStatus]:
        """Bind ``conn`` to the VM named in ``hello`` by the rules above.

        Raises :class:`VmNameInUse`, changing nothing, when another live connection holds
        the VM under another boot id."""
        session = self._by_vm.get(hello.vm)
        if session is not None and session.boot_id != hello.boot_id:
            holder = session.connection
            if holder is not None and holder is not conn and holder.is_live():
                raise VmNameInUse(f"vm {hello.vm} is connected ({holder.peer}) under another "
                                  "boot id")
        if session is not None and session.boot_id == hello.boot_id:
            status = wire.HelloStatus.RESUMED
            session.resumes += 1
            session.agent_session = hello.session_id
        else:
            if session is not None:
                log.info("vm %s rebooted (boot id %s -> %s): dropping client %d",
                         hello.vm, session.boot_id.hex(), hello.boot_id.hex(), session.client_id)
                self._drop(session, keep=conn)
            client_id = self.store.new_client(hello.vm, self.default_quota)
            session = Session(hello.vm, hello.boot_id, hello.session_id, client_id)
            self._by_vm[hello.vm] = session
            status = wire.HelloStatus.FRESH
        if session.connection is not None and session.connection is not conn:
            log.info("vm %s: connection %s superseded by %s",
                     hello.vm, session.connection.peer, conn.peer)
            session.connection.supersede()
        session.connection = conn
        session.connected_since = time.time()
        return session, status

    def detach(self, session: Session, conn: Attachment) -> None:
        """The connection went away; the session and its pages stay for a resume."""
        if session.connection is conn:
            session.connection = None
            session.connected_since = None

    def _drop(self, session: Session, keep: Attachment) -> None:
        if session.connection is not None and session.connection is not keep:
            session.connection.supersede()
            session.connection = None
        self.store.destroy_client(session.client_id)
        del self._by_vm[session.vm]

    def forget(self, client_id: int) -> dict[str, Any]:
        """Drop a departed VM for good: its session, client, pools and pages.

        Without this a VM that never comes back would hold its persistent pages (and carry
        them through every state file) forever. Refused while the VM is connected.
        """
        session = next((s for s in self._by_vm.values() if s.client_id == client_id), None)
        if session is not None:
            holder = session.connection
            if holder is not None and holder.is_live():
                raise VmConnected(f"vm {session.vm} is connected ({holder.peer})")
            del self._by_vm[session.vm]
        self.store.destroy_client(client_id)
        return {"client_id": client_id, "vm": session.vm if session else None, "forgotten": True}

    def pools(self, session: Session) -> list[wire.PoolInfo]:
        return [wire.PoolInfo(p["pool_id"], int(p["flags"]), bytes.fromhex(p["uuid"]))
                for p in self.store.pools(session.client_id)]

    def info(self) -> list[dict[str, Any]]:
        return [s.info() for s in self._by_vm.values()]

    def records(self) -> list[dict[str, Any]]:
        return [s.record() for s in self._by_vm.values()]

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Re-create detached sessions from state-file records (clients already in the store).

        A record whose client is not in the store, or that repeats a VM, is skipped with a
        warning: a VM without its client must start fresh rather than resume into nothing.
        """
        known = set(self.store.clients())
        for rec in records:
            try:
                vm, client_id = str(rec["vm"]), int(rec["client_id"])
                boot_id = bytes.fromhex(rec["boot_id"])
                agent_session = bytes.fromhex(rec.get("agent_session", ""))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("state file: bad session record %r skipped (%s)", rec, exc)
                continue
            if client_id not in known or vm in self._by_vm:
                log.warning("state file: session of vm %s (client %s) skipped", vm, client_id)
                continue
            self._by_vm[vm] = Session(vm, boot_id, agent_session, client_id)
            log.info("restored session of vm %s (client %d)", vm, client_id)
