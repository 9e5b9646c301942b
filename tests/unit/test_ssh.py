"""SSH helpers without a guest: bounded waits, aborts, key errors, free ports, the
ssh_config block and guest paths."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tmemh.ssh import (
    CommandResult,
    GuestConnection,
    SSHCommandFailed,
    SSHConnectError,
    SSHKeyError,
    SSHSession,
    free_loopback_port,
    ssh_config_block,
    wait_for_ssh,
)
from tmemh.sshcopy import guest_path


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
            GuestConnection("127.0.0.1", port, "root", key_file, connect_timeout=1.0)


def test_failed_command_carries_its_result() -> None:
    result = CommandResult("false", 1, "", "it broke\n")
    assert not result.ok
    assert "'false' exited with 1: it broke" in str(SSHCommandFailed(result))


def test_the_former_name_still_works() -> None:
    assert SSHSession is GuestConnection


def test_a_refused_connection_is_a_connect_error(key_file: Path) -> None:
    port = free_loopback_port()
    with pytest.raises(SSHConnectError, match=f"root@127.0.0.1:{port}"):
        GuestConnection("127.0.0.1", port, "root", key_file, connect_timeout=2.0)


def test_ssh_config_block_text() -> None:
    text = ssh_config_block("vm1", 2222, "root", Path("/cache/id_ed25519"))
    assert text == (
        "Host vm1\n"
        "    HostName 127.0.0.1\n"
        "    Port 2222\n"
        "    User root\n"
        "    IdentityFile /cache/id_ed25519\n"
        "    IdentitiesOnly yes\n"
        "    StrictHostKeyChecking no\n"
        "    UserKnownHostsFile /dev/null\n"
        "    LogLevel ERROR\n")


def test_ssh_config_block_quotes_blanks_escapes_percent_and_is_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = ssh_config_block("vm1", 2222, "root", Path("my keys/100%/id"))
    assert f'    IdentityFile "{tmp_path}/my keys/100%%/id"\n' in text
    with pytest.raises(ValueError):
        ssh_config_block("vm1", 2222, "root", Path('/a"b'))


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_openssh_reads_the_block_as_meant(tmp_path: Path) -> None:
    """``ssh -G`` resolves a config without connecting: what the user's ssh would use."""
    key = tmp_path / "a key" / "id_ed25519"
    config = tmp_path / "config"
    config.write_text(ssh_config_block("guest-1", 40022, "root", key))
    resolved = subprocess.run(["ssh", "-G", "-F", str(config), "guest-1"], capture_output=True,
                              text=True, check=True).stdout
    settings = {}
    for line in resolved.splitlines():
        name, _, value = line.partition(" ")
        settings.setdefault(name, value)
    assert settings["hostname"] == "127.0.0.1" and settings["port"] == "40022"
    assert settings["user"] == "root" and settings["identityfile"] == str(key)
    assert settings["stricthostkeychecking"] == "false"
    assert settings["userknownhostsfile"] == "/dev/null" and settings["loglevel"] == "ERROR"


@pytest.mark.parametrize(("given", "sftp"), [
    ("", "."), ("~", "."), ("~/", "."), ("~/x/y", "x/y"), ("/etc/hostname", "/etc/hostname"),
    ("rel/a", "rel/a"), ("~user/x", "~user/x"),
])
def test_guest_paths_for_sftp(given: str, sftp: str) -> None:
    assert guest_path(given) == sftp
