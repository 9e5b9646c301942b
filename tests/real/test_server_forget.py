"""Forgetting a departed VM over the control socket of a live daemon."""

from __future__ import annotations

import os
import time

import pytest
from support.daemon import running_daemon

from tmemd.service.controlclient import ControlClient, ControlRequestError

pytestmark = pytest.mark.real

PAGE = (b"departed vm page " * 300)[:4096]


def test_a_departed_vm_is_forgotten_and_a_connected_one_is_not() -> None:
    with running_daemon() as daemon:
        control = ControlClient(daemon.control)
        with daemon.transport() as gone:
            gone.hello("gone-vm", b"g" * 16, os.urandom(16))
            pool = gone.new_pool(1)
            assert gone.put(pool, (1, 2, 3), 4, PAGE)
        with daemon.transport() as live:
            live.hello("live-vm", b"l" * 16, os.urandom(16))
            with pytest.raises(ControlRequestError, match="VmConnected"):
                control.call("forget", client="live-vm")
            deadline = time.monotonic() + 10  # the daemon notices gone-vm's stream closed
            while True:
                try:
                    reply = control.call("forget", client="gone-vm")
                    break
                except ControlRequestError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            assert reply["vm"] == "gone-vm" and reply["forgotten"] is True
            names = [c["name"] for c in control.call("list")["clients"]]
            assert names == ["live-vm"]
            assert control.call("stats")["global"]["curr_pages"] == 0
        with daemon.transport() as back:  # the same VM coming back starts fresh
            reply = back.hello("gone-vm", b"g" * 16, os.urandom(16))
            assert reply.status.name == "FRESH" and reply.pools == []
