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

Who may name which VM is decided before any of that, by the host (docs/trust-model.md): a VM
*admitted* by the operator has a socket of its own, and a connection on it is that VM whatever
its hello says; a hello naming another VM there is refused (:class:`WrongVm`), and so is a hello
on the operator's shared socket naming an admitted VM. The registry also keeps the operator's
shared-pool authorisations (which uuids each VM may create or join), like Xen's
``tmem-shared-auth``. Admissions and authorisations are kept in the records the state file
saves, so they survive a restart.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tmem_agent.channel import wire

from ..store.errors import InvalidArgument, TmemError

if TYPE_CHECKING:
    from ..store.tmem import TmemStore

log = logging.getLogger(__name__)

# A VM name the operator admits becomes a file name (its socket): letters, digits, '.', '_',
# '-', not starting with a dot or a dash, at most 63 characters (as the harness's VM names).
VM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
UUID_BYTES = 16
T = TypeVar("T")


def check_vm_name(name: object) -> str:
    """``name`` if it is a valid VM name; InvalidArgument saying what is allowed otherwise."""
    if not isinstance(name, str) or not VM_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid VM name {name!r}: use letters, digits, '.', '_', '-'"
                              " (not first), at most 63 characters")
    return name


def page_of(items: Iterable[T], offset: int, limit: int) -> list[T]:
    """Items ``offset`` to ``offset + limit`` (in iteration order) without copying the rest."""
    return list(itertools.islice(items, offset, offset + limit))


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


class WrongVm(Exception):
    """A hello named a VM that the connection does not belong to."""


class NotAdmitted(TmemError):
    """The VM has not been admitted (it has no socket of its own)."""


class NotAuthorised(Exception):
    """A shared pool uuid the operator has not allowed the VM to create or join."""


@dataclass
class Admission:
    """The operator's word that a VM exists: it gets a socket of its own.

    ``owner`` is the uid the socket file is given (QEMU's user), None for the daemon's own;
    ``socket`` is where the daemon listens for it now (None until it does).
    """

    vm: str
    owner: int | None = None
    socket: str | None = None


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
        self._admitted: dict[str, Admission] = {}
        self._shared: dict[str, set[bytes]] = {}  # vm -> uuids it may create or join

    def __len__(self) -> int:
        return len(self._by_vm)

    def get(self, vm: str) -> Session | None:
        return self._by_vm.get(vm)

    # ----- the operator's records: admissions and shared-pool authorisations ---------------
    def admit(self, vm: str, owner: int | None = None) -> Admission:
        """Record ``vm`` as admitted (again: the owner is updated) and return its record."""
        admission = self._admitted.get(check_vm_name(vm))
        if admission is None:
            admission = self._admitted[vm] = Admission(vm, owner)
        admission.owner = owner
        return admission

    def dismiss(self, vm: str) -> Admission:
        """Drop the admission of ``vm`` (its session and pages stay until forgotten)."""
        try:
            return self._admitted.pop(vm)
        except KeyError:
            raise NotAdmitted(f"vm {vm!r} is not admitted") from None

    def admission(self, vm: str) -> Admission | None:
        return self._admitted.get(vm)

    def admissions(self) -> list[Admission]:
        return list(self._admitted.values())

    def share_allow(self, vm: str, uuid: bytes) -> None:
        """Let ``vm`` create or join the shared pool ``uuid``."""
        checked = _shared_uuid(uuid)  # both checked before anything changes
        self._shared.setdefault(check_vm_name(vm), set()).add(checked)

    def share_deny(self, vm: str, uuid: bytes) -> bool:
        """Take the authorisation back (pools already joined stay); whether it was given."""
        uuids = self._shared.get(vm)
        if uuids is None or bytes(uuid) not in uuids:
            return False
        uuids.discard(bytes(uuid))
        if not uuids:
            del self._shared[vm]
        return True

    def may_share(self, vm: str, uuid: bytes) -> bool:
        return bytes(uuid) in self._shared.get(vm, ())

    def check_identity(self, vm: str, socket_vm: str | None) -> None:
        """Raise :class:`WrongVm` unless a hello naming ``vm`` may come on a connection of
        ``socket_vm``'s socket (None: the operator's shared socket)."""
        if socket_vm is not None and vm != socket_vm:
            raise WrongVm(f"this socket belongs to vm {socket_vm}; a hello naming {vm!r} is"
                          " refused here")
        if socket_vm is None and vm in self._admitted:
            raise WrongVm(f"vm {vm} is admitted to a socket of its own; its hello is taken"
                          " only there")

    # ----- sessions ------------------------------------------------------------------------
    def attach(
        self, hello: wire.Hello, conn: Attachment, socket_vm: str | None = None
    ) -> tuple[Session, wire.HelloStatus]:
        """Bind ``conn`` to the VM named in ``hello`` by the rules above; ``socket_vm`` is the
        VM whose socket the connection came in on (None: the operator's socket).

        Raises, changing nothing, :class:`WrongVm` when the hello names a VM the connection
        does not belong to, and :class:`VmNameInUse` when another live connection holds the
        VM under another boot id."""
        self.check_identity(hello.vm, socket_vm)
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

    # ----- listing -------------------------------------------------------------------------
    def info(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Session records in the order the VMs first said hello; a page of them if asked."""
        sessions: Iterable[Session] = self._by_vm.values()
        if limit is not None or offset:
            sessions = page_of(sessions, offset, len(self._by_vm) if limit is None else limit)
        return [s.info() for s in sessions]

    def vm_names(self) -> list[str]:
        """Every VM the operator made a record for: admitted, or allowed a shared pool."""
        return list(dict.fromkeys([*self._admitted, *self._shared]))

    def vms_info(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The operator's record of each VM in :meth:`vm_names` (a page of them if asked)."""
        names = self.vm_names()
        names = names[offset:] if limit is None else names[offset : offset + limit]
        out = []
        for vm in names:
            admission = self._admitted.get(vm)
            out.append({
                "vm": vm,
                "admitted": admission is not None,
                "owner": admission.owner if admission else None,
                "socket": admission.socket if admission else None,
                "shared_uuids": sorted(u.hex() for u in self._shared.get(vm, ())),
            })
        return out

    # ----- the state file ------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """One record per VM for the state file: its session (VM, boot id, client), its
        admission (``admitted``: the socket owner) and its shared-pool authorisations
        (``shared_uuids``), whichever it has."""
        out: dict[str, dict[str, Any]] = {}
        for vm, session in self._by_vm.items():
            out[vm] = session.record()
        for vm, admission in self._admitted.items():
            out.setdefault(vm, {"vm": vm})["admitted"] = {"owner": admission.owner}
        for vm, uuids in self._shared.items():
            out.setdefault(vm, {"vm": vm})["shared_uuids"] = sorted(u.hex() for u in uuids)
        return list(out.values())

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Re-create detached sessions (clients already in the store), admissions and
        authorisations from state-file records.

        A session whose client is not in the store, or that repeats a VM, is skipped with a
        warning: a VM without its client must start fresh rather than resume into nothing.
        Its admission and authorisations are kept all the same.
        """
        known = set(self.store.clients())
        for rec in records:
            vm = rec.get("vm") if isinstance(rec, dict) else None
            if not isinstance(vm, str) or not vm:
                log.warning("state file: record without a VM name skipped: %r", rec)
                continue
            self._restore_grants(vm, rec)
            if "client_id" in rec or "boot_id" in rec:
                self._restore_session(vm, rec, known)

    def _restore_grants(self, vm: str, rec: dict[str, Any]) -> None:
        try:
            if "admitted" in rec:
                owner = rec["admitted"]["owner"]
                if owner is not None and (type(owner) is not int or owner < 0):
                    raise ValueError(f"bad owner {owner!r}")
                self.admit(vm, owner)
            for text in rec.get("shared_uuids", []):
                self.share_allow(vm, bytes.fromhex(text))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("state file: bad admission of vm %r skipped (%s)", vm, exc)

    def _restore_session(self, vm: str, rec: dict[str, Any], known: set[int]) -> None:
        try:
            client_id = int(rec["client_id"])
            boot_id = bytes.fromhex(rec["boot_id"])
            agent_session = bytes.fromhex(rec.get("agent_session", ""))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("state file: bad session record %r skipped (%s)", rec, exc)
            return
        if client_id not in known or vm in self._by_vm:
            log.warning("state file: session of vm %s (client %s) skipped", vm, client_id)
            return
        self._by_vm[vm] = Session(vm, boot_id, agent_session, client_id)
        log.info("restored session of vm %s (client %d)", vm, client_id)


def _shared_uuid(uuid: bytes) -> bytes:
    if not isinstance(uuid, bytes | bytearray) or len(uuid) != UUID_BYTES or not any(uuid):
        raise InvalidArgument("a shared pool uuid is 16 bytes, not all zero")
    return bytes(uuid)
