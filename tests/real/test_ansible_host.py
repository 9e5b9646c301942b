"""host.yml for real, against this machine over a local connection.

Everything the play creates for the project goes below the test's own directory (the roles'
path variables point there): the virtual environment, tmemd's configuration, unit, init
script, sockets, state, PID file and log, and the runtime directory of the harness's libvirtd.
What it changes in the system is what the private libvirtd of the tests changes too (the
``libvirt-qemu`` user, libvirt's directories, a missing qemu.conf), plus the ``libvirt``
group; apt installs nothing the set-up did not already install.

The first run makes changes, the second none; then tmemd answers on its control socket and
its metrics port (loopback), and libvirt answers. Afterwards tmemd is stopped by the PID in
its PID file, and the libvirt daemons the play started by the PIDs the helper recorded.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.playbook import run_playbook

from tmemd.service.controlclient import ControlClient
from tmemh.procs import stop_pid
from tmemh.ssh import free_loopback_port

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="provisioning a host needs root")]



def is_program(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


@pytest.fixture
def prefix(tmp_path: Path) -> Iterator[Path]:
    """The play's own directory; whatever it started is stopped by PID afterwards."""
    root = tmp_path / "host"
    root.mkdir(mode=0o700)
    try:
        yield root
    finally:
        pid_file = root / "tmemd.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            assert stop_pid(pid, lambda p: is_program(p, "tmemd"), 30.0, poll=0.1)
        tmemh = root / "opt" / "venv" / "bin" / "tmemh"
        if tmemh.exists():
            stopped = subprocess.run([str(tmemh), "libvirtd", "stop", "--runtime-dir",
                                      str(root / "libvirtd")], capture_output=True, text=True,
                                     timeout=120, check=False)
            assert stopped.returncode == 0, stopped.stderr


def test_host_playbook_provisions_localhost_then_changes_nothing(prefix: Path,
                                                                  tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[tmem_hosts]\nlocalhost ansible_connection=local "
                         "ansible_python_interpreter=/usr/bin/python3\n")
    metrics_port = free_loopback_port()
    settings = {
        "tmem_project_prefix": prefix / "opt",
        "tmem_project_link_dir": prefix / "bin",
        "tmem_libvirt_runtime_dir": prefix / "libvirtd",
        "tmemd_config_dir": prefix / "etc",
        "tmemd_unit_dir": prefix / "etc",
        "tmemd_init_script": prefix / "etc" / "tmemd.init",
        "tmemd_runtime_dir": prefix / "run",
        "tmemd_state_dir": prefix / "state",
        "tmemd_pid_file": prefix / "tmemd.pid",
        "tmemd_log_file": prefix / "tmemd.log",
        "tmemd_metrics_port": metrics_port,
    }
    (prefix / "bin").mkdir()
    extra_vars = tmp_path / "vars.yml"
    extra_vars.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))

    first, output = run_playbook("host.yml", inventory, tmp_path, "-e", f"@{extra_vars}",
                                 timeout=1200)
    assert first["localhost"]["changed"] > 0, output[-4000:]
    second, output = run_playbook("host.yml", inventory, tmp_path, "-e", f"@{extra_vars}",
                                 timeout=1200)
    assert second["localhost"]["changed"] == 0, output[-6000:]

    pid = int((prefix / "tmemd.pid").read_text())
    assert is_program(pid, "tmemd")
    with ControlClient(str(prefix / "run" / "control.sock")) as client:
        listing = client.call("list")
    assert "clients" in listing
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        assert page.status == 200 and b"tmem" in page.read()
    config = (prefix / "etc" / "tmemd.toml").read_text()
    assert 'metrics_host = "127.0.0.1"' in config and "metrics_allow_remote = false" in config
    assert (prefix / "etc" / "tmemd.service").is_file()

    virsh = subprocess.run(["virsh", "--connect", "qemu:///system", "version"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert virsh.returncode == 0, virsh.stderr
    assert "libvirt" in virsh.stdout.lower()
