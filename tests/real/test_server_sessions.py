"""The session registry's identity and resume rules, and its records, over a real store
(connections are plain recorders)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tmem_agent.channel import wire
from tmemd.service.sessions import NotAdmitted, SessionRegistry, VmNameInUse, WrongVm
from tmemd.store.errors import InvalidArgument
from tmemd.store.tmem import StoreConfig, TmemStore

PAGE = b"s" * wire.PAGE_SIZE


class Conn:
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.superseded = 0
        self.live = True

    def supersede(self) -> None:
        self.superseded += 1

    def is_live(self) -> bool:
        return self.live


def hello(vm: str, boot: bytes) -> wire.Hello:
    return wire.Hello(vm, boot.ljust(16, b"."), b"x" * 16)


@pytest.fixture
def store() -> Iterator[TmemStore]:
    store = TmemStore(StoreConfig(memory_limit_bytes=8 << 20))
    yield store
    store.close()


def test_resume_keeps_the_client_and_supersedes_the_old_connection(store: TmemStore) -> None:
    registry = SessionRegistry(store)
    first, second = Conn("a"), Conn("b")
    session, status = registry.attach(hello("vm", b"1"), first)
    assert status is wire.HelloStatus.FRESH
    pool = store.new_pool(session.client_id, 1)
    store.put(session.client_id, pool, (1, 2, 3), 4, PAGE)
    again, status = registry.attach(hello("vm", b"1"), second)
    assert status is wire.HelloStatus.RESUMED and again is session
    assert first.superseded == 1 and session.connection is second
    assert store.get(session.client_id, pool, (1, 2, 3), 4) == PAGE
    assert [p.pool_id for p in registry.pools(session)] == [pool]
    registry.detach(session, first)  # a late close of the old connection changes nothing
    assert session.connection is second
    registry.detach(session, second)
    assert session.connection is None and registry.info()[0]["connected"] is False


def test_new_boot_id_destroys_the_old_client_but_not_its_own_connection(
    store: TmemStore,
) -> None:
    registry = SessionRegistry(store, default_quota=1 << 20)
    conn = Conn("a")
    old, _ = registry.attach(hello("vm", b"1"), conn)
    new, status = registry.attach(hello("vm", b"2"), conn)
    assert status is wire.HelloStatus.FRESH and new.client_id != old.client_id
    assert store.clients() == [new.client_id] and conn.superseded == 0
    assert store.client_stats(new.client_id)["quota_bytes"] == 1 << 20


def test_another_live_connection_with_another_boot_id_is_refused_and_changes_nothing(
    store: TmemStore,
) -> None:
    registry = SessionRegistry(store)
    owner, intruder = Conn("a"), Conn("b")
    session, _ = registry.attach(hello("vm", b"1"), owner)
    pool = store.new_pool(session.client_id, 1)
    store.put(session.client_id, pool, (1, 2, 3), 4, PAGE)
    with pytest.raises(VmNameInUse, match="vm vm is connected"):
        registry.attach(hello("vm", b"2"), intruder)
    assert registry.get("vm") is session and session.connection is owner
    assert owner.superseded == 0 and store.clients() == [session.client_id]
    assert store.get(session.client_id, pool, (1, 2, 3), 4) == PAGE
    owner.live = False  # closing, not yet detached: a rebooted VM may take its name over
    new, status = registry.attach(hello("vm", b"2"), intruder)
    assert status is wire.HelloStatus.FRESH and store.clients() == [new.client_id]


def test_restore_takes_good_records_and_skips_bad_ones(store: TmemStore) -> None:
    kept = store.new_client("vm")
    registry = SessionRegistry(store)
    registry.restore([
        {"vm": "vm", "boot_id": (b"1".ljust(16, b".")).hex(), "client_id": kept},
        {"vm": "vm", "boot_id": "00" * 16, "client_id": kept},  # the same VM again
        {"vm": "ghost", "boot_id": "00" * 16, "client_id": 999},  # client not in the store
        {"vm": "broken", "boot_id": "not hex", "client_id": kept},
        {"boot_id": "00" * 16},
    ])
    assert [s["vm"] for s in registry.info()] == ["vm"]
    session, status = registry.attach(hello("vm", b"1"), Conn("a"))
    assert status is wire.HelloStatus.RESUMED and session.client_id == kept
    assert registry.records() == [{"vm": "vm", "boot_id": (b"1".ljust(16, b".")).hex(),
                                   "agent_session": (b"x" * 16).hex(), "client_id": kept}]


def test_a_vm_socket_takes_only_its_vm_and_the_operator_socket_no_admitted_vm(
    store: TmemStore,
) -> None:
    registry = SessionRegistry(store)
    registry.admit("victim")
    victim, intruder, tool = Conn("v"), Conn("i"), Conn("t")
    session, _ = registry.attach(hello("victim", b"1"), victim, socket_vm="victim")
    pool = store.new_pool(session.client_id, 1)
    store.put(session.client_id, pool, (1, 2, 3), 4, PAGE)
    victim.live = False
    registry.detach(session, victim)  # gone: a new boot id would once have wiped it
    for boot in (b"1", b"2"):
        with pytest.raises(WrongVm, match="belongs to vm intruder"):
            registry.attach(hello("victim", boot), intruder, socket_vm="intruder")
        with pytest.raises(WrongVm, match="admitted to a socket of its own"):
            registry.attach(hello("victim", boot), tool)  # the operator's socket
    assert registry.get("victim") is session and session.connection is None
    assert store.clients() == [session.client_id]
    assert store.get(session.client_id, pool, (1, 2, 3), 4) == PAGE
    registry.dismiss("victim")  # no longer admitted: the operator's tools may name it
    again, status = registry.attach(hello("victim", b"1"), tool)
    assert again is session and status is wire.HelloStatus.RESUMED


def test_admissions_and_authorisations_are_records_that_restore(store: TmemStore) -> None:
    registry = SessionRegistry(store)
    uuid = bytes(range(1, 17))
    session, _ = registry.attach(hello("vm", b"1"), Conn("a"), socket_vm=None)
    registry.admit("vm", owner=64055)
    registry.admit("idle")
    registry.share_allow("vm", uuid)
    registry.share_allow("planned", uuid)
    assert registry.may_share("vm", uuid) and not registry.may_share("idle", uuid)
    records = registry.records()
    assert records == [
        {"vm": "vm", "boot_id": (b"1".ljust(16, b".")).hex(), "agent_session": (b"x" * 16).hex(),
         "client_id": session.client_id, "admitted": {"owner": 64055},
         "shared_uuids": [uuid.hex()]},
        {"vm": "idle", "admitted": {"owner": None}},
        {"vm": "planned", "shared_uuids": [uuid.hex()]},
    ]
    again = SessionRegistry(store)
    again.restore(records + [{"vm": "../x", "admitted": {"owner": None}},
                             {"vm": "y", "admitted": {"owner": "root"}},
                             {"vm": "z", "shared_uuids": ["00" * 16]}])
    assert again.records() == records
    assert [a.vm for a in again.admissions()] == ["vm", "idle"]
    assert again.share_deny("planned", uuid) is True and again.share_deny("planned", uuid) is False
    assert again.vm_names() == ["vm", "idle"]
    with pytest.raises(NotAdmitted):
        again.dismiss("planned")
    with pytest.raises(InvalidArgument):
        again.admit("a/b")
