"""SSH helpers without a guest: bounded waits, aborts, key errors, free ports."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tmemh.ssh import (
    CommandResult,
    SSHCommandFailed,
    SSHConnectError,
    SSHKeyError,
    SSHSession,
    free_loopback_port,
    wait_for_ssh,
)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    return path


def test_an_unreadable_key_is_not_retried(tmp_path: Path) -> None:
    bad = tmp_path / "bad_key"
    bad.write_text("not a key")
    with pytest.raises(SSHKeyError, match="bad_key"):
        wait_for_ssh("127.0.0.1", free_loopback_port(), "root", bad, timeout=60)


def test_free_port_can_be_bound() -> None:
    port = free_loopback_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_gives_up_after_its_timeout(key_file: Path) -> None:
    port = free_loopback_port()  # nobody listens there
    started = time.monotonic()
    with pytest.raises(SSHConnectError, match=rf"127.0.0.1:{port} not ready after 2 s"):
        wait_for_ssh("127.0.0.1", port, "root", key_file, timeout=2.0, interval=0.2)
    assert 1.8 < time.monotonic() - started < 10


def test_wait_stops_when_the_vm_dies(key_file: Path) -> None:
    class Died(Exception):
        pass

    def still_starting() -> None:
        raise Died()

    with pytest.raises(Died):
        wait_for_ssh("127.0.0.1", free_loopback_port(), "root", key_file, timeout=60,
                     still_starting=still_starting)


def test_a_silent_server_is_a_connect_error(key_file: Path) -> None:
    """A port that accepts but never speaks SSH (like QEMU's forward before sshd runs)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(SSHConnectError, match=f"127.0.0.1:{port}"):
            SSHSession("127.0.0.1", port, "root", key_file, connect_timeout=1.0)


def test_failed_command_carries_its_result() -> None:
    result = CommandResult("false", 1, "", "it broke\n")
    assert not result.ok
    assert "'false' exited with 1: it broke" in str(SSHCommandFailed(result))
