"""Who a connection is comes from the host: admitted VMs' own sockets, against a live daemon.

Each test is one of the ways a guest could once pass for another VM (issue 8): naming a
disconnected VM with a new boot id (which wiped it), naming a live VM with its boot id (which
took its session over), two VMs from one image sharing a default name, joining another VM's
shared pool by its uuid; plus the limit's error frame and admissions across a restart.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import DaemonUnderTest, running_daemon

from tmem_agent.channel import wire
from tmem_agent.channel.transport import ConnectionLost, RemoteError, Transport
from tmemd.service.controlclient import ControlClient, ControlRequestError

pytestmark = pytest.mark.real

PERSIST, SHARED = 1, 2
TEXT = (b"a guest's page, compressible enough for a persistent pool. " * 80)[: wire.PAGE_SIZE]
KEYS = [((3, i // 8, 0), i) for i in range(40)]


def page(n: int) -> bytes:
    return (n.to_bytes(4, "little") * 16 + TEXT)[: wire.PAGE_SIZE]


PAGES = [page(i) for i in range(len(KEYS))]


def boot(tag: str) -> bytes:
    return tag.encode().ljust(16, b".")


def on(path: str | Path) -> Transport:
    return Transport.unix(str(path)).open()


def refused_hello(agent: Transport, vm: str, boot_id: bytes) -> RemoteError:
    with pytest.raises(RemoteError) as refused:
        agent.hello(vm, boot_id, os.urandom(16), timeout=5)
    return refused.value


@pytest.fixture
def daemon() -> Iterator[DaemonUnderTest]:
    with running_daemon() as d:
        yield d


def test_a_hello_naming_another_vm_on_a_vm_socket_is_refused_and_changes_nothing(
    daemon: DaemonUnderTest,
) -> None:
    victim_path, intruder_path = daemon.admit("victim"), daemon.admit("intruder")
    assert victim_path != intruder_path
    with on(victim_path) as victim:
        victim.hello("victim", boot("v1"), os.urandom(16))
        pool = victim.new_pool(PERSIST)
        assert all(victim.put_batch(pool, KEYS, PAGES))
    # The victim is disconnected: a new boot id under its name used to wipe it, its own boot
    # id to resume it. Both are refused on another VM's socket.
    with on(intruder_path) as intruder:
        for boot_id in (boot("new"), boot("v1")):
            error = refused_hello(intruder, "victim", boot_id)
            assert error.code == wire.ErrorCode.WRONG_VM
            assert "belongs to vm intruder" in error.message
        reply = intruder.hello("intruder", boot("i1"), os.urandom(16))  # still usable as itself
        assert reply.status is wire.HelloStatus.FRESH and reply.pools == []
        with pytest.raises(RemoteError, match="NO_SUCH_POOL"):
            intruder.get(pool, *KEYS[0])
    with on(victim_path) as victim:
        reply = victim.hello("victim", boot("v1"), os.urandom(16))
        assert reply.status is wire.HelloStatus.RESUMED
        assert victim.get_batch(pool, KEYS) == PAGES


def test_the_operator_socket_refuses_an_admitted_name_even_with_its_boot_id(
    daemon: DaemonUnderTest,
) -> None:
    path = daemon.admit("victim")
    with on(path) as victim:
        victim.hello("victim", boot("v1"), os.urandom(16))
        pool = victim.new_pool(PERSIST)
        assert all(victim.put_batch(pool, KEYS, PAGES))
        with daemon.transport() as impostor:  # the boot id is shown by `ctl list`
            for boot_id in (boot("v1"), boot("new")):
                error = refused_hello(impostor, "victim", boot_id)
                assert error.code == wire.ErrorCode.WRONG_VM
                assert "admitted to a socket of its own" in error.message
            impostor.hello("a-tool", boot("t"), os.urandom(16))  # other names are the tools'
        assert victim.get_batch(pool, KEYS) == PAGES  # not superseded, nothing lost
        assert victim.stats()["session"]["resumes"] == 0


def test_two_vms_of_one_image_are_two_clients_whatever_their_default_name(
    daemon: DaemonUnderTest,
) -> None:
    first, second = daemon.admit("vm-a"), daemon.admit("vm-b")
    with on(first) as a, on(second) as b:
        for agent in (a, b):  # both guests would say their image's host name
            assert refused_hello(agent, "debian", boot("d")).code == wire.ErrorCode.WRONG_VM
        client_a = a.hello("vm-a", boot("same"), os.urandom(16)).client_id
        client_b = b.hello("vm-b", boot("same"), os.urandom(16)).client_id
        assert client_a != client_b
        assert a.ping(b"a") == b"a" and b.ping(b"b") == b"b"  # neither superseded the other
    with ControlClient(daemon.control) as control:
        names = {c["name"] for c in control.call("list")["clients"]}
    assert names == {"vm-a", "vm-b"}


def test_a_shared_pool_needs_the_operators_authorisation_to_create_and_to_join(
    daemon: DaemonUnderTest,
) -> None:
    uuid = os.urandom(16)
    owner_path, other_path = daemon.admit("owner"), daemon.admit("other")
    with ControlClient(daemon.control) as control, on(owner_path) as owner, \
            on(other_path) as other:
        owner.hello("owner", boot("o"), os.urandom(16))
        other.hello("other", boot("x"), os.urandom(16))
        with pytest.raises(RemoteError, match="NOT_AUTHORISED"):
            owner.new_pool(SHARED, uuid)  # not even its creator may, unasked
        reply = control.call("share_allow", vm="owner", uuid=uuid.hex())
        assert reply == {"vm": "owner", "uuid": uuid.hex(), "allowed": True}
        pool = owner.new_pool(SHARED, uuid)
        assert owner.put(pool, (1, 2, 3), 4, PAGES[0])
        for wanted in (uuid, os.urandom(16)):  # join the owner's, or create another
            with pytest.raises(RemoteError) as refused:
                other.new_pool(SHARED, wanted)
            assert refused.value.code == wire.ErrorCode.NOT_AUTHORISED
            assert "share_allow" in refused.value.message
        listed = {c["name"]: c for c in control.call("list")["clients"]}
        assert listed["other"]["pools"] == [] and listed["owner"]["pages"] == 1
        dashed = str(uuidlib.UUID(bytes=uuid))  # the control socket takes either form
        control.call("share_allow", vm="other", uuid=dashed)
        joined = other.new_pool(SHARED, uuid)
        assert other.get(joined, (1, 2, 3), 4) == PAGES[0]
        assert control.call("share_deny", vm="other", uuid=uuid.hex())["was_allowed"] is True
        with pytest.raises(RemoteError, match="NOT_AUTHORISED"):
            other.new_pool(SHARED, uuid)  # a second slot: refused now
        assert other.get(joined, (1, 2, 3), 4) == PAGES[0]  # the pool it joined stays
        vms = {v["vm"]: v for v in control.call("list")["vms"]}
        assert vms["owner"]["shared_uuids"] == [uuid.hex()] and vms["other"]["shared_uuids"] == []
    with daemon.transport() as tool:  # the operator's socket: the same rule
        tool.hello("a-tool", boot("t"), os.urandom(16))
        with pytest.raises(RemoteError, match="NOT_AUTHORISED"):
            tool.new_pool(SHARED, uuid)


def test_admitted_sockets_are_private_named_safely_and_dismissed(
    daemon: DaemonUnderTest,
) -> None:
    path = daemon.admit("private-vm")
    directory = Path(daemon.vm_socket_dir)
    assert path == directory / "private-vm.sock"
    assert stat.S_ISSOCK(os.lstat(path).st_mode) and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o711
    assert daemon.admit("private-vm") == path  # again: the same socket
    with ControlClient(daemon.control) as control:
        for bad in ("../escape", "a/b", "", ".hidden", "x" * 64, "sp ace", "é"):
            with pytest.raises(ControlRequestError, match="InvalidArgument"):
                control.call("admit", vm=bad)
        with pytest.raises(ControlRequestError, match="NotAdmitted"):
            control.call("dismiss", vm="never-admitted")
        with pytest.raises(ControlRequestError, match="AdmissionError.*no user named"):
            control.call("admit", vm="owned", owner="no-such-user-here")
        assert not (directory / "owned.sock").exists()
        agent = on(path)
        agent.hello("private-vm", boot("p"), os.urandom(16))
        pool = agent.new_pool(PERSIST)
        assert agent.put(pool, (1, 1, 1), 1, PAGES[1])
        reply = control.call("dismiss", vm="private-vm")
        assert reply == {"vm": "private-vm", "dismissed": True, "connections_closed": 1}
        assert not path.exists()
        with pytest.raises(ConnectionLost):
            agent.ping(b"gone?")
        agent.close()
        sessions = control.call("list")["sessions"]
        assert [s["vm"] for s in sessions] == ["private-vm"]  # its pages stay until forget
        assert daemon.admit("private-vm") == path  # admitted again, it resumes
        with on(path) as back:
            assert back.hello("private-vm", boot("p"), os.urandom(16)).status.name == "RESUMED"
            assert back.get(pool, (1, 1, 1), 1) == PAGES[1]
        control.call("dismiss", vm="private-vm")
        assert control.call("forget", client="private-vm")["forgotten"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a socket to another user needs root")
def test_an_owner_gets_the_socket_file(daemon: DaemonUnderTest) -> None:
    import pwd

    path = daemon.admit("for-nobody", owner="nobody")
    assert os.lstat(path).st_uid == pwd.getpwnam("nobody").pw_uid
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert daemon.admit("for-nobody") == path  # no owner: back to the daemon's own user
    assert os.lstat(path).st_uid == os.geteuid()


def frames_until_closed(sock: socket.socket) -> list[wire.Frame | wire.FrameError]:
    sock.settimeout(5)
    decoder = wire.FrameDecoder()
    events: list[wire.Frame | wire.FrameError] = []
    while data := sock.recv(65536):
        events.extend(decoder.feed(data))
    return events


def test_a_connection_over_the_limit_is_told_why_before_it_is_closed() -> None:
    with running_daemon("--max-connections", "1") as daemon:
        path = daemon.admit("limited")
        with daemon.transport() as first:
            first.hello("holder", boot("h"), os.urandom(16))
            for target in (daemon.socket, str(path)):  # the limit counts every socket
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
                    extra.connect(target)
                    (event,) = frames_until_closed(extra)
                assert isinstance(event, wire.Frame) and event.flags & wire.ERROR
                code, message = wire.decode_error(event.payload)
                assert code == wire.ErrorCode.BUSY and "1 connections already" in message
            assert first.ping(b"still") == b"still"


def test_admissions_and_authorisations_survive_a_graceful_restart() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tmemd-"))
    uuid = os.urandom(16)
    try:
        with running_daemon("--state-file", str(workdir / "state.bin"),
                            workdir=workdir) as daemon:
            path = daemon.admit("keeper")
            with ControlClient(daemon.control) as control:
                control.call("share_allow", vm="keeper", uuid=uuid.hex())
                control.call("share_allow", vm="planned", uuid=uuid.hex())  # not admitted
            with on(path) as agent:
                agent.hello("keeper", boot("k"), os.urandom(16))
                pool = agent.new_pool(PERSIST)
                assert all(agent.put_batch(pool, KEYS, PAGES))
            assert daemon.stop() == 0
            assert not path.exists()
            daemon.start()
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600  # listening again
            with ControlClient(daemon.control) as control:
                vms = control.call("list")["vms"]
            assert vms == [
                {"vm": "keeper", "admitted": True, "owner": None, "socket": str(path),
                 "shared_uuids": [uuid.hex()]},
                {"vm": "planned", "admitted": False, "owner": None, "socket": None,
                 "shared_uuids": [uuid.hex()]},
            ]
            with on(path) as agent:
                reply = agent.hello("keeper", boot("k"), os.urandom(16))
                assert reply.status is wire.HelloStatus.RESUMED
                assert agent.get_batch(pool, KEYS) == PAGES
                assert agent.new_pool(SHARED, uuid) != pool
            with daemon.transport() as impostor:
                error = refused_hello(impostor, "keeper", boot("k"))
                assert error.code == wire.ErrorCode.WRONG_VM
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_admitting_a_vm_closes_the_operator_socket_connection_that_drove_it(
    daemon: DaemonUnderTest,
) -> None:
    with daemon.transport() as tool:
        tool.hello("late", boot("l"), os.urandom(16))
        pool = tool.new_pool(PERSIST)
        assert tool.put(pool, (1, 1, 1), 1, PAGES[2])
        path = daemon.admit("late")
        with pytest.raises(ConnectionLost):
            tool.ping(b"still mine?")
    assert tool.stream_errors + tool.stray_frames >= 1  # the WRONG_VM frame, request id 0
    with on(path) as vm:
        assert vm.hello("late", boot("l"), os.urandom(16)).status is wire.HelloStatus.RESUMED
        assert vm.get(pool, (1, 1, 1), 1) == PAGES[2]
