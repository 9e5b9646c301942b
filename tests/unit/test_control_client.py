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
        assert "clients 1-2 of 2" in listing and "sessions 1-1 of 1" in listing
        assert main(["ctl", "--control", path, "list", "--offset", "1", "--limit", "5"]) == 0
        listing = capsys.readouterr().out
        assert "clients 2-2 of 2" in listing and "sessions none of 1" in listing
        assert "vm2" in listing and "vm1" not in listing

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


def test_ctl_admits_dismisses_and_authorises_shared_pools(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket_dir() as directory:
        small = SmallDaemon(populated_store(), vm_socket_dir=f"{directory}/vms")
        try:
            with control_server_in_thread(small) as path:
                assert main(["ctl", "--control", path, "admit", "vm-a"]) == 0
                assert capsys.readouterr().out == f"{directory}/vms/vm-a.sock\n"
                assert small.registry.admission("vm-a") is not None
                uuid = "01234567-89ab-cdef-0123-456789abcdef"
                assert main(["ctl", "--control", path, "share-allow", "vm-a", uuid]) == 0
                assert small.registry.may_share("vm-a", bytes.fromhex(uuid.replace("-", "")))
                assert main(["ctl", "--control", path, "list"]) == 0
                listing = capsys.readouterr().out
                assert "vms 1-1 of 1" in listing and f"{directory}/vms/vm-a.sock" in listing
                assert main(["ctl", "--control", path, "share-deny", "vm-a", uuid]) == 0
                assert main(["ctl", "--control", path, "dismiss", "vm-a"]) == 0
                assert small.registry.admission("vm-a") is None
                capsys.readouterr()
                assert main(["ctl", "--control", path, "admit", "../x"]) == 1
                assert "InvalidArgument: invalid VM name" in capsys.readouterr().err
                assert main(["ctl", "--control", path, "list", "--limit", "many"]) == 2
                assert main(["ctl", "--control", path, "stats", "--limit", "1"]) == 0
                assert len(json.loads(capsys.readouterr().out)["clients"]) == 1
        finally:
            small.store.close()
