"""The private libvirtd helper: shared by concurrent users, stopped by the last one."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
from conftest import process_alive

from tmemh.libvirtd import PrivateLibvirtd
from tmemh.vm import BackendUnavailable
from tmemh.vm.libvirt_backend import open_connection

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="starting libvirtd needs root")]


def answers(uri: str) -> bool:
    try:
        open_connection(uri).close()
    except BackendUnavailable:
        return False
    return True


def test_daemon_is_shared_and_stopped_by_the_last_user() -> None:
    first = PrivateLibvirtd()
    uri = first.start()
    already_running_elsewhere = not (first.runtime_dir / "owned.json").exists()
    second = PrivateLibvirtd()
    try:
        assert answers(uri)
        owned = json.loads((first.runtime_dir / "owned.json").read_text()) \
            if not already_running_elsewhere else {}
        assert second.start() == uri
        first.stop()
        first.stop()  # idempotent
        assert answers(uri)  # the second user still holds it
        assert all(process_alive(pid) for pid in owned.values())
    finally:
        second.stop()
        first.stop()
    with open(first.runtime_dir / "users.lock") as users:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pytest.skip("another process uses the private libvirtd right now")
        if owned:  # we were the last users: the daemons the helper started are gone
            assert not any(process_alive(pid) for pid in owned.values())
            assert not answers(uri)
            assert not (first.runtime_dir / "owned.json").exists()
