"""`tmemh vm` argument handling that needs no VM: channels, missing VMs, empty state."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemh.cli import main
from tmemh.vm import VMError
from tmemh.vm_cli import _parse_channel


def test_channel_options_parse() -> None:
    server = _parse_channel("org.tmem.0=/run/a.sock")
    assert (server.name, server.socket_path, server.mode) == ("org.tmem.0", Path("/run/a.sock"),
                                                              "server")
    assert _parse_channel("org.tmem.1=/run/b.sock,connect").mode == "connect"
    for bad in ("nopath", "name=", "n=/x.sock,listen"):
        with pytest.raises(VMError):
            _parse_channel(bad)


def test_commands_on_unknown_vms_fail_clearly(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    for command in (["down", "ghost"], ["diagnose", "ghost"], ["disk", "ghost"],
                    ["ssh", "ghost", "--", "true"]):
        assert main(["vm", "--state-dir", state, *command]) == 1
        assert "no running VM named 'ghost'" in capsys.readouterr().err
    assert main(["vm", "--state-dir", state, "console", "ghost"]) == 1
    assert "no console log" in capsys.readouterr().err
    assert main(["vm", "--state-dir", state, "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert not (tmp_path / "state").exists()
