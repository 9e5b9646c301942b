"""The socket-path claim the VM and control servers share, on real unix sockets."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tmemd.service.unixsock import claim_socket_path

pytestmark = pytest.mark.real


class Refused(OSError):
    pass


def test_a_stale_socket_is_removed_and_a_missing_path_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    claim_socket_path(str(path), "test socket", Refused)  # nothing there
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: as a crashed server leaves it
    claim_socket_path(str(path), "test socket", Refused)
    assert not path.exists()


def test_a_live_socket_or_a_plain_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(Refused, match="test socket .* is in use: another server"):
            claim_socket_path(str(path), "test socket", Refused)
        assert path.exists()
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    with pytest.raises(Refused, match="exists and is not a socket"):
        claim_socket_path(str(plain), "test socket", Refused)
    assert plain.read_text() == "keep me"
