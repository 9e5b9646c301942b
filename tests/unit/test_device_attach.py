"""The attach steps of an agent's /dev/nbdN without a kernel: the commands the swap device's
and the cache's attachers run, in order, the phases they report, the state file, a restart's
reattach (swap still on, swap gone, another boot's device) and the reconnect after the kernel
drops a connection. The kernel (netlink, /sys, /proc/swaps) is stubbed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tmem_agent.swap import netlink
from tmem_agent.swap.attach import DeviceAttacher
from tmem_agent.swap.nbdproto import Export
from tmem_agent.swap.swapon import SwapAttacher

BOOT = bytes(range(16))
PAGE = 4096


class FakeServer:
    """The loop's side the attachers use: commands succeed unless told, timers run at once."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.failing: dict[str, int] = {}
        self.connections: list[Any] = []
        self.added: list[str | None] = []

    def spawn(self, argv: list[str], done: Callable[[int, str], None]) -> None:
        self.commands.append(argv)
        code = self.failing.get(argv[0], 0)
        done(code, "boom" if code else "")

    def add_connection(self, sock: Any, export: str | None = None) -> None:
        sock.close()
        self.added.append(export)

    def call_later(self, delay: float, func: Callable[[], None]) -> None:
        func()


class FakeKernel:
    def __init__(self) -> None:
        self.configured = False
        self.swapping = False
        self.reconfigures: list[dict[str, Any]] = []
        self.refuse_reconnect = False

    def reconfigure(self, index: int, *, sock_fd: int | None = None,
                    timeout: int | None = None, dead_conn_timeout: int | None = None) -> None:
        if sock_fd is not None and self.refuse_reconnect:
            raise OSError("no")
        self.reconfigures.append({"sock": sock_fd is not None, "timeout": timeout,
                                  "dead_conn_timeout": dead_conn_timeout})


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKernel]:
    fake = FakeKernel()
    monkeypatch.setattr(netlink, "device_configured", lambda device: fake.configured)
    monkeypatch.setattr(netlink, "swap_active", lambda device: fake.swapping)
    monkeypatch.setattr(netlink, "reconfigure", fake.reconfigure)
    real_open = open

    def no_sysfs(path: Any, *args: Any, **kwargs: Any) -> Any:  # max_sectors_kb, page-cluster
        if str(path).startswith(("/sys/", "/proc/sys/")):
            raise OSError("not here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_sysfs)
    yield fake


class Events:
    def __init__(self, attacher: DeviceAttacher) -> None:
        self.seen: list[str] = []
        attacher.on_ready = lambda: self.seen.append("ready")
        attacher.on_fail = lambda message: self.seen.append(f"fail: {message}")
        attacher.on_phase = lambda phase: self.seen.append(phase)


def swap_attacher(server: FakeServer, tmp_path: Path, **options: Any) -> SwapAttacher:
    export = Export("swap", 1 << 30, max_request=256 * PAGE)
    return SwapAttacher(server, export, "/dev/nbd0", "/run/nbd.sock",  # type: ignore[arg-type]
                        str(tmp_path / "fallback.state"), BOOT, priority=100,
                        page_cluster_order=5, **options)


def test_swap_first_start_runs_nbd_client_mkswap_swapon_and_writes_the_state(
        kernel: FakeKernel, tmp_path: Path) -> None:
    server = FakeServer()
    attacher = swap_attacher(server, tmp_path)
    events = Events(attacher)
    attacher.start()
    assert server.commands == [
        ["nbd-client", "-u", "/run/nbd.sock", "-N", "swap", "/dev/nbd0", "-swap", "-b", "4096"],
        ["mkswap", "/dev/nbd0"],
        ["swapon", "--discard", "-p", "100", "/dev/nbd0"]]
    assert events.seen == ["nbd-client", "mkswap", "swapon", "ready"]
    assert json.loads((tmp_path / "fallback.state").read_text()) == {
        "boot_id": BOOT.hex(), "device": "/dev/nbd0", "size": 1 << 30, "export": "swap"}
    assert kernel.reconfigures == [{"sock": False, "timeout": 30, "dead_conn_timeout": 300}]


def test_a_failing_step_fails_the_attach(kernel: FakeKernel, tmp_path: Path) -> None:
    server = FakeServer()
    server.failing["swapon"] = 255
    attacher = swap_attacher(server, tmp_path)
    events = Events(attacher)
    attacher.start()
    assert events.seen[-1] == "fail: swapon failed (255): boom"


def test_the_cache_device_gets_no_swap_steps(kernel: FakeKernel, tmp_path: Path) -> None:
    server = FakeServer()
    attacher = DeviceAttacher(server, Export("cache", 1 << 28), "/dev/nbd1",  # type: ignore[arg-type]
                              "/run/nbd.sock", str(tmp_path / "cache.state"), BOOT)
    events = Events(attacher)
    attacher.start()
    assert server.commands == [
        ["nbd-client", "-u", "/run/nbd.sock", "-N", "cache", "/dev/nbd1", "-b", "4096"]]
    assert events.seen == ["nbd-client", "ready"]


@pytest.mark.parametrize("swapping", [True, False])
def test_a_restart_reconnects_and_turns_swap_on_only_if_it_is_off(
        kernel: FakeKernel, tmp_path: Path, swapping: bool) -> None:
    swap_attacher(FakeServer(), tmp_path).start()  # the earlier agent of this boot
    kernel.configured, kernel.swapping = True, swapping
    kernel.reconfigures.clear()
    server = FakeServer()
    attacher = swap_attacher(server, tmp_path)
    events = Events(attacher)
    attacher.start()
    assert kernel.reconfigures[0]["sock"] and server.added == ["swap"]
    if swapping:
        assert server.commands == [] and events.seen == ["reconnecting", "ready"]
    else:
        assert [argv[0] for argv in server.commands] == ["mkswap", "swapon"]
        assert events.seen == ["reconnecting", "mkswap", "swapon", "ready"]


def test_a_device_attached_by_another_boot_is_refused(kernel: FakeKernel,
                                                      tmp_path: Path) -> None:
    (tmp_path / "fallback.state").write_text(json.dumps({"boot_id": "00", "device": "/dev/nbd0",
                                                         "size": 1 << 30}))
    kernel.configured = True
    attacher = swap_attacher(FakeServer(), tmp_path)
    events = Events(attacher)
    attacher.start()
    assert events.seen == [
        "fail: /dev/nbd0 is attached, but not by a tmem agent of this boot"]


def test_a_dropped_connection_is_replaced_and_retries_are_bounded(
        kernel: FakeKernel, tmp_path: Path) -> None:
    server = FakeServer()
    attacher = swap_attacher(server, tmp_path)
    attacher.start()
    kernel.configured = True
    conn = type("Conn", (), {"export": attacher.export})()
    attacher.connection_closed(conn)
    assert server.added == ["swap"]
    kernel.refuse_reconnect = True
    attacher.connection_closed(conn)
    assert server.added == ["swap"]  # 20 tries, all refused, then it gives up
