"""The private libvirtd helper: shared by concurrent users, stopped by the last one."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
from conftest import process_alive
from support.libvirtd import PrivateLibvirtd

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


def domains(uri: str) -> list[str]:
    connection = open_connection(uri)
    try:
        return [domain.name() for domain in connection.listAllDomains()]
    finally:
        connection.close()


def test_daemon_is_shared_and_stopped_by_the_last_user() -> None:
    first = PrivateLibvirtd()
    second = PrivateLibvirtd()
    uri = first.start()
    try:
        owned_path = first.runtime_dir / "owned.json"
        owned = json.loads(owned_path.read_text()) if owned_path.exists() else {}
        if "libvirtd" not in owned:
            pytest.skip(f"a libvirtd this helper did not start already answers at {uri}; "
                        "it cannot show that the helper stops the daemons it started")
        assert answers(uri)
        assert (first.runtime_dir / "libvirtd.log").is_file()  # LIBVIRT_LOG_OUTPUTS honoured
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
            pytest.skip("another process uses the private libvirtd right now, so this test "
                        "was not its last user and cannot see it stop")
        if answers(uri) and domains(uri):
            pytest.skip(f"libvirtd holds domains {domains(uri)} of others, so it stays running")
        assert not any(process_alive(pid) for pid in owned.values())
        assert not answers(uri)
        assert not owned_path.exists()
