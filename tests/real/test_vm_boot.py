"""Boot the real guest image with each backend and use everything a VM offers.

One boot per backend: SSH commands and file copies, virtio-serial ports in both modes
(QEMU listening, QEMU connecting to us), disk throttling changed on the running VM and
measured, block counters, SysRq diagnosis; then teardown leaves no process, domain, overlay,
socket or record behind. The first SSH port the launch picks is already taken (the race of an
auto-picked port), so the launch must retry with another.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import process_alive

from tmemh.image.manifest import ImageManifest
from tmemh.ssh import SSHCommandTimeout
from tmemh.vm import ChannelSpec, DiskThrottle, RunState, VirtualMachine, VMSpec, machine
from tmemh.vm.libvirt_backend import LibvirtBackend
from tmemh.vm.state import StateDir

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and libvirt need root")]

SERVER_PORT = "org.tmemh.listen"  # QEMU listens; the test connects
CONNECT_PORT = "org.tmemh.dial"  # the test listens; QEMU connects
MiB = 1024 * 1024


def port_device(name: str) -> str:
    """Shell snippet printing the /dev/vportNpM of the virtio port called ``name``."""
    return (f"$(for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = {name} ] "
            f"&& echo /dev/${{p##*/}}; done)")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "dial.sock"))
    sock.listen(1)
    sock.settimeout(60)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def taken_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A loopback port another socket holds, handed out as the first auto-picked SSH port."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = int(holder.getsockname()[1])
    first = [port]
    pick_free = machine.free_loopback_port
    monkeypatch.setattr(machine, "free_loopback_port",
                        lambda: first.pop() if first else pick_free())
    try:
        yield port
    finally:
        holder.close()


def accept_live(listener: socket.socket) -> socket.socket:
    """The first connection whose peer is still there. The launch attempt that failed on the
    taken SSH port had connected to the listener too, then exited: skip its connection."""
    while True:
        connection, _ = listener.accept()
        try:
            if connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                connection.close()  # closed by its (gone) QEMU
                continue
        except BlockingIOError:
            pass  # open, nothing sent yet: the running guest's QEMU
        return connection


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("backend", ["qemu", "libvirt"])
def test_vm_end_to_end(backend: str, request: pytest.FixtureRequest, guest_image: ImageManifest,
                       vm_state: Path, tmp_path: Path, listener: socket.socket,
                       taken_port: int) -> None:
    uri = request.getfixturevalue("libvirt_uri") if backend == "libvirt" else None
    listen_sock = tmp_path / "listen.sock"
    spec = VMSpec(name=f"e2e-{backend}", memory_mib=512, disk_size_mib=3072,
                  throttle=DiskThrottle(100 * MiB, 5000),
                  channels=(ChannelSpec(SERVER_PORT, listen_sock, "server"),
                            ChannelSpec(CONNECT_PORT, Path(listener.getsockname()), "connect")))
    vm = VirtualMachine(spec, guest_image, backend=backend, uri=uri, state_dir=vm_state)
    started = time.monotonic()
    with vm:
        print(f"{backend}: up in {time.monotonic() - started:.1f} s")
        record = vm.record
        assert record is not None and record.backend == backend
        assert record.ssh_port != taken_port  # retried with another port
        assert StateDir(vm_state).load(spec.name) == record

        assert vm.run("uname -r", check=True).stdout.strip() == guest_image.kernel_version
        sectors = vm.run("cat /sys/block/vda/size", check=True).stdout
        assert int(sectors) * 512 == 3072 * MiB

        payload = os.urandom(300_000)
        (tmp_path / "up.bin").write_bytes(payload)
        session = vm.ssh()
        session.put(tmp_path / "up.bin", "/tmp/up.bin")
        digest = vm.run("sha256sum /tmp/up.bin", check=True).stdout.split()[0]
        assert digest == hashlib.sha256(payload).hexdigest()
        vm.run("cp /tmp/up.bin /tmp/down.bin", check=True)
        session.get("/tmp/down.bin", tmp_path / "down.bin")
        assert (tmp_path / "down.bin").read_bytes() == payload
        assert vm.run("exit 3").exit_code == 3
        with pytest.raises(SSHCommandTimeout):
            vm.run("sleep 30", timeout=1.0)

        names = vm.run("cat /sys/class/virtio-ports/*/name", check=True).stdout.split()
        assert sorted(names) == sorted([SERVER_PORT, CONNECT_PORT])

        dialed = accept_live(listener)  # QEMU connected to us
        with dialed:
            vm.run(f"printf guest-says-hi > {port_device(CONNECT_PORT)}", check=True, timeout=30)
            assert receive(dialed, 13) == b"guest-says-hi"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(listen_sock))
            client.sendall(b"host-ping")
            got = vm.run(f"timeout 20 head -c 9 {port_device(SERVER_PORT)}", timeout=30)
            assert got.stdout == "host-ping"

        assert vm.disk_throttle() == DiskThrottle(100 * MiB, 5000)
        vm.set_disk_throttle(DiskThrottle(2 * MiB, 0))
        assert vm.disk_throttle() == DiskThrottle(2 * MiB, 0)
        before = vm.block_stats()
        read_started = time.monotonic()
        vm.run("dd if=/dev/vda of=/dev/null bs=1M count=6 skip=100 iflag=direct", check=True)
        read_seconds = time.monotonic() - read_started
        after = vm.block_stats()
        print(f"{backend}: 6 MiB at 2 MiB/s took {read_seconds:.1f} s; {before} -> {after}")
        assert after.read_bytes - before.read_bytes >= 6 * MiB
        assert after.read_ops > before.read_ops
        assert read_seconds >= 2.0  # the throttle really bites: ~3 s for 6 MiB at 2 MiB/s
        vm.set_disk_throttle(DiskThrottle(0, 0))
        assert vm.disk_throttle() == DiskThrottle(0, 0)

        dump = vm.diagnose("w")
        assert "Show Blocked State" in dump

        pid = record.handle.get("pid")
        domain = record.handle.get("domain")

    assert vm.state is RunState.SHUT_DOWN
    vm.shutdown()  # idempotent
    if backend == "qemu":
        assert not process_alive(int(pid))
    else:
        assert not LibvirtBackend(str(uri), str(domain)).is_running()
        assert LibvirtBackend(str(uri), str(domain))._lookup() is None
    assert not Path(record.overlay).exists()
    assert not listen_sock.exists()
    assert StateDir(vm_state).load(spec.name) is None
    assert "TMEM-GUEST-READY" in vm.console_log.read_text(errors="replace")
