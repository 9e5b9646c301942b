"""The synchronous control client and ``tmemd ctl`` against a real control server."""

import json

import pytest
from test_control_support import SmallDaemon, control_server_in_thread, populated_store, socket_dir

from tmemd.cli import main
from tmemd.service.controlclient import ControlClient, ControlConnectionError, ControlRequestError


@pytest.fixture
def daemon() -> SmallDaemon:
    small = SmallDaemon(populated_store())
    yield small
    small.store.close()


def test_client_calls_and_raises_the_servers_error_type(daemon: SmallDaemon) -> None:
    with control_server_in_thread(daemon) as path, ControlClient(path) as control:
        assert [c["name"] for c in control.call("list")["clients"]] == ["vm1", "vm2"]
        assert control.call("set_quota", client="vm1", quota="1M")["quota_bytes"] == 1 << 20
        with pytest.raises(ControlRequestError) as refused:
            control.call("freeze", client="nobody")
        assert refused.value.kind == "NoSuchClient"
        with pytest.raises(ControlRequestError, match="UnknownOp"):
            control.call("reboot")
        assert control.call("stats")["global"]["clients"] == 2  # still usable


def test_client_reports_a_missing_socket() -> None:
    with socket_dir() as directory, pytest.raises(ControlConnectionError, match="cannot connect"):
        ControlClient(f"{directory}/absent.sock")


def test_ctl_list_and_set_commands(daemon: SmallDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    with control_server_in_thread(daemon) as path:
        assert main(["ctl", "--control", path, "list"]) == 0
        listing = capsys.readouterr().out
        assert "vm1" in listing and "vm2" in listing and "0:pers(8), 1:ephe(8)" in listing
        assert "1 session(s)" in listing

        assert main(["ctl", "--control", path, "set-quota", "vm2", "64M"]) == 0
        assert daemon.store.client_stats(2)["quota_bytes"] == 64 << 20
        assert main(["ctl", "--control", path, "set-quota", "vm2", "none"]) == 0
        assert daemon.store.client_stats(2)["quota_bytes"] is None
        assert main(["ctl", "--control", path, "set-limit", "12M"]) == 0
        assert daemon.store.stats()["memory_limit_bytes"] == 12 << 20
        assert main(["ctl", "--control", path, "set-cap", "none"]) == 0
        assert daemon.store.stats()["persistent_cap_bytes"] == 9 << 20  # 3/4 of the 12M limit
        assert main(["ctl", "--control", path, "freeze", "vm1"]) == 0
        assert daemon.store.client_stats(1)["frozen"] is True
        assert main(["ctl", "--control", path, "thaw", "1"]) == 0
        assert daemon.store.client_stats(1)["frozen"] is False
        capsys.readouterr()
        assert main(["ctl", "--control", path, "--json", "flush-client", "vm1"]) == 0
        assert json.loads(capsys.readouterr().out) == {"client_id": 1, "pages_flushed": 16}
        assert main(["ctl", "--control", path, "stats", "--client", "vm2"]) == 0
        assert [c["name"] for c in json.loads(capsys.readouterr().out)["clients"]] == ["vm2"]
        assert main(["ctl", "--control", path, "shutdown"]) == 0
        assert daemon.shutdown_requests == 1


def test_ctl_errors_exit_1_and_bad_sizes_2_with_a_message(
    daemon: SmallDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    with control_server_in_thread(daemon) as path:
        assert main(["ctl", "--control", path, "freeze", "vm7"]) == 1
        assert "NoSuchClient: no client named 'vm7'" in capsys.readouterr().err
        assert main(["ctl", "--control", path, "set-limit", "lots"]) == 2  # a usage error
        assert "bad size 'lots'" in capsys.readouterr().err
        assert daemon.store.stats()["memory_limit_bytes"] == 16 << 20
    assert main(["ctl", "--control", path, "list"]) == 1
    assert "cannot connect" in capsys.readouterr().err
