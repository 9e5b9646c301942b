"""A failed start of the private libvirtd stops exactly the daemons it started.

The daemons are stand-ins: small real processes named ``virtlogd`` and ``libvirtd`` (shell
scripts found first on PATH) that daemonize, write their PID file and log like the real ones,
so the helper's start-up and clean-up run unchanged without touching the host's libvirt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import libvirtd
from support.libvirtd import LibvirtdError, PrivateLibvirtd

from tmemh.procs import pid_alive

# -d -p PIDFILE: start a copy of itself in the background (which writes PIDFILE, logs a line
# to the file named in LIBVIRT_LOG_OUTPUTS and stays alive), then return like a daemon does.
DAEMON_SCRIPT = """#!/bin/sh
if [ "$1" = "-d" ]; then
    "$0" --serve "$3" </dev/null >/dev/null 2>&1 &
    exit 0
fi
echo "$(basename "$0") pretends to start but never answers" >> "${LIBVIRT_LOG_OUTPUTS#3:file:}"
echo $$ > "$2"
while :; do sleep 0.2; done
"""
FAILING_SCRIPT = """#!/bin/sh
echo "cannot bind the admin socket" >&2
exit 1
"""
UNANSWERED_URI = "qemu:///system?socket=/nonexistent/tmemh-test/libvirt-sock"


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH finds the stand-in daemons first; nothing outside tmp_path is changed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(libvirtd.os, "geteuid", lambda: 0)
    monkeypatch.setattr(libvirtd, "_ensure_qemu_user", lambda: None)
    monkeypatch.setattr(libvirtd, "QEMU_CONF", tmp_path / "qemu.conf")
    monkeypatch.setattr(libvirtd, "DAEMON_DIRS", ())
    monkeypatch.setattr(libvirtd, "VIRTLOGD_SOCKET", tmp_path / "no-virtlogd-sock")
    return bin_dir


def install(bin_dir: Path, program: str, script: str) -> None:
    path = bin_dir / program
    path.write_text(script)
    path.chmod(0o755)


def pids_from_files(runtime: Path, *programs: str) -> list[int]:
    return [int((runtime / f"{program}.pid").read_text()) for program in programs]


def test_daemons_that_never_answer_are_stopped_and_forgotten(fake_host: Path,
                                                             tmp_path: Path) -> None:
    install(fake_host, "virtlogd", DAEMON_SCRIPT)
    install(fake_host, "libvirtd", DAEMON_SCRIPT)
    runtime = tmp_path / "run"
    helper = PrivateLibvirtd(runtime, UNANSWERED_URI, start_timeout=1.0)
    with pytest.raises(LibvirtdError) as failure:
        helper.start()
    message = str(failure.value)
    assert "does not answer after 1 s" in message
    assert "libvirtd pretends to start but never answers" in message  # the log tails
    assert "virtlogd pretends to start but never answers" in message
    pids = pids_from_files(runtime, "virtlogd", "libvirtd")
    assert not any(pid_alive(pid) for pid in pids)
    assert not (runtime / "owned.json").exists()
    helper.stop()  # nothing to stop: the failed start holds no use of the daemon


def test_virtlogd_is_stopped_when_libvirtd_fails(fake_host: Path, tmp_path: Path) -> None:
    install(fake_host, "virtlogd", DAEMON_SCRIPT)
    install(fake_host, "libvirtd", FAILING_SCRIPT)
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / "owned.json").write_text(json.dumps({"other": 1}))  # recorded earlier: kept
    with pytest.raises(LibvirtdError, match="libvirtd -d exited 1: cannot bind"):
        PrivateLibvirtd(runtime, UNANSWERED_URI, start_timeout=5.0).start()
    [virtlogd_pid] = pids_from_files(runtime, "virtlogd")
    assert not pid_alive(virtlogd_pid)
    assert json.loads((runtime / "owned.json").read_text()) == {"other": 1}


def test_a_daemon_with_domains_is_left_running_after_one_domain_query(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = PrivateLibvirtd(runtime_dir=tmp_path, uri=UNANSWERED_URI)
    (tmp_path / "owned.json").write_text(json.dumps({"libvirtd": 2**22 + 1}))
    queries: list[str] = []

    def domains(self: PrivateLibvirtd) -> list[str]:
        queries.append(self.uri)
        return ["guest"]

    monkeypatch.setattr(PrivateLibvirtd, "_domains", domains)
    helper._stop_owned_daemons()
    assert queries == [UNANSWERED_URI]
    assert json.loads((tmp_path / "owned.json").read_text()) == {"libvirtd": 2**22 + 1}
