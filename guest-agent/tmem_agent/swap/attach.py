"""An agent's /dev/nbdN (the swap device, a block cache's device): attached once per boot,
connected again after an agent restart.

First start in a boot: ``nbd-client -u SOCKET -N EXPORT /dev/nbdN [OPTIONS] -b 4096``
(netlink mode; the swap device adds ``-swap``) or, with ``--attach netlink``, the kernel is
handed one end of a socketpair directly. Then the state file is written, the dead-connection
timeout is set (nbd-client 3.24 cannot), so that the kernel holds the device's I/O while no
agent serves it, and the request size is capped at what one tmem batch carries; then the
device is prepared for use (:meth:`DeviceAttacher._prepare`: nothing for a cache, mkswap and
swapon for swap, :mod:`.swapon`). A restarted agent (same boot, the device still configured
by an agent of this boot, as the state file says) gives the kernel a new connection with
NBD_CMD_RECONFIGURE; so does the agent when the kernel drops its connection.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from ..jsonfile import read_json_object, write_json
from . import netlink
from .loop import BlockServer
from .nbdconn import PAGE_SIZE, NbdConnection
from .nbdproto import Export

log = logging.getLogger(__name__)

RECONNECT_TRIES = 20


class DeviceAttacher:
    """Keeps ``device`` attached to ``export`` of ``server``. ``on_ready()`` once it is
    attached (or reattached) and prepared, ``on_fail(message)`` if it cannot be;
    ``on_phase(name)`` as it enters a step that takes a while."""

    owner = "tmem cache"  # who attached a device, in the message when another one did
    nbd_client_options: tuple[str, ...] = ()  # after the device on nbd-client's command line

    def __init__(self, server: BlockServer, export: Export, device: str, nbd_path: str,
                 state_path: str, boot_id: bytes, *, mode: str = "nbd-client",
                 io_timeout: int = 30, dead_conn_timeout: int = 300) -> None:
        if mode not in ("nbd-client", "netlink", "none"):
            raise ValueError(f"unknown attach mode {mode!r}")
        self.server, self.export, self.device = server, export, device
        self.nbd_path, self.state_path, self.boot_id = nbd_path, state_path, boot_id
        self.mode = mode
        self.io_timeout, self.dead_conn_timeout = io_timeout, dead_conn_timeout
        self.on_ready: Callable[[], None] = lambda: None
        self.on_fail: Callable[[str], None] = lambda message: None
        self.on_phase: Callable[[str], None] = lambda phase: None
        self._tries_left = RECONNECT_TRIES

    def start(self) -> None:
        if self.mode == "none":
            self.on_ready()
        elif netlink.device_configured(self.device):
            self._reattach()
        elif self.mode == "netlink":
            self._attach_by_netlink()
        else:
            self.on_phase("nbd-client")
            self.server.spawn(["nbd-client", "-u", self.nbd_path, "-N", self.export.name,
                               self.device, *self.nbd_client_options, "-b", str(PAGE_SIZE)],
                              self._nbd_client_done)

    def _nbd_client_done(self, code: int, output: str) -> None:
        if code != 0:
            self.on_fail(f"nbd-client failed ({code}): {output.strip()}")
            return
        self._attached()

    def _attach_by_netlink(self) -> None:
        ours, kernels = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            netlink.connect(netlink.device_index(self.device), self.export.size, PAGE_SIZE,
                            self.export.flags, kernels.fileno(), timeout=self.io_timeout,
                            dead_conn_timeout=self.dead_conn_timeout)
        except OSError as exc:
            ours.close()
            self.on_fail(f"netlink connect of {self.device} failed: {exc}")
            return
        finally:
            kernels.close()
        self.server.add_connection(ours, self.export.name)
        self._attached()

    def _attached(self) -> None:
        self._write_state()
        try:
            netlink.reconfigure(netlink.device_index(self.device), timeout=self.io_timeout,
                                dead_conn_timeout=self.dead_conn_timeout)
        except OSError as exc:
            log.error("cannot set the timeouts of %s (an agent restart will fail its I/O): "
                      "%s", self.device, exc)
        path = f"/sys/block/{os.path.basename(self.device)}/queue/max_sectors_kb"
        try:
            with open(path, "w") as f:
                f.write(str(self.export.max_request // 1024))
        except OSError as exc:
            log.warning("cannot cap the request size in %s: %s", path, exc)
        self._prepare()

    def _prepare(self) -> None:
        """Make the freshly attached device ready for use, then :meth:`_ready` (or
        ``on_fail``). A block device for a file system needs nothing more."""
        self._ready()

    def _reattach(self) -> None:
        state = self._read_state()
        if state.get("boot_id") != self.boot_id.hex() or state.get("device") != self.device:
            self.on_fail(f"{self.device} is attached, but not by a {self.owner} of this boot")
            return
        if state.get("size") != self.export.size:
            self.on_fail(f"{self.device} was attached with {state.get('size')} bytes, now "
                         f"{self.export.size}")
            return
        self.on_phase("reconnecting")
        self._reconnect()
        self._reattached()

    def _reattached(self) -> None:
        """After a restart, the device connected again (or reconnecting): ready for use."""
        self._ready()

    def _reconnect(self) -> None:
        """Give the kernel a new connection for the device (its old one is dead)."""
        ours, kernels = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            netlink.reconfigure(netlink.device_index(self.device), sock_fd=kernels.fileno(),
                                timeout=self.io_timeout,
                                dead_conn_timeout=self.dead_conn_timeout)
        except OSError as exc:
            ours.close()
            log.error("reconnecting %s failed: %s", self.device, exc)
            self._retry()
            return
        finally:
            kernels.close()  # if the kernel did not take it, ``ours`` sees end of file
        log.info("gave %s a new connection", self.device)
        self.server.add_connection(ours, self.export.name)

    def connection_closed(self, conn: NbdConnection) -> None:
        """The loop dropped ``conn``: connect the device again if it lost its last one."""
        if conn.export is not self.export or self.mode == "none":
            return
        if any(c.export is self.export for c in self.server.connections):
            return
        if not netlink.device_configured(self.device):
            log.info("%s is no longer attached", self.device)
            return
        self._retry()

    def _retry(self) -> None:
        if self._tries_left <= 0:
            log.error("giving up reconnecting %s", self.device)
            return
        self._tries_left -= 1
        self.server.call_later(0.5, self._reconnect)

    def _ready(self) -> None:
        self._tries_left = RECONNECT_TRIES
        self.on_ready()

    def _write_state(self) -> None:
        write_json(self.state_path, {"boot_id": self.boot_id.hex(), "device": self.device,
                                     "size": self.export.size, "export": self.export.name})

    def _read_state(self) -> dict[str, Any]:
        return read_json_object(self.state_path)
