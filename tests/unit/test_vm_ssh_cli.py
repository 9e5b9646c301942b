"""`tmemh vm ssh|cp|ssh-config` without a guest: argument parsing, exit codes, config text.

A "running VM" here is a record whose process is a sleeping Python that names the record's
QMP socket on its command line (what the QEMU backend checks), with its SSH port closed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tmemd.clikit import UsageError, build_parser
from tmemh.cli import DESCRIPTION, SUBCOMMAND_MODULES, main
from tmemh.ssh import free_loopback_port
from tmemh.vm.state import StateDir, VMRecord
from tmemh.vm_ssh_cli import CopyPlan, command_words, parse_copy, split_target


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("tmemh", DESCRIPTION, SUBCOMMAND_MODULES).parse_args(list(argv))


@pytest.mark.parametrize(("text", "split"), [
    ("vm1:/root/f", ("vm1", "/root/f")),
    ("vm1:", ("vm1", "")),
    ("vm1:~/x", ("vm1", "~/x")),
    ("vm.1:a:b", ("vm.1", "a:b")),
    ("./vm1:x", (None, "./vm1:x")),  # a slash before the colon: a local file
    ("/tmp/a:b", (None, "/tmp/a:b")),
    (":x", (None, ":x")),
    ("plain", (None, "plain")),
])
def test_copy_targets_split_like_scp(text: str, split: tuple[str | None, str]) -> None:
    assert split_target(text) == split


def test_copy_plans() -> None:
    assert parse_copy(["a", "dir/b", "vm1:/root/"]) == CopyPlan("vm1", True, ("a", "dir/b"),
                                                                  "/root/")
    assert parse_copy(["vm1:/etc/hostname", "vm1:logs", "out"]) == CopyPlan(
        "vm1", False, ("/etc/hostname", "logs"), "out")
    assert parse_copy(["f", "vm1:"]) == CopyPlan("vm1", True, ("f",), "")


@pytest.mark.parametrize(("paths", "message"), [
    (["only"], "at least a source and a destination"),
    (["a", "b"], "NAME:PATH is needed on one side"),
    (["vm1:a", "vm2:b"], "one side must be a local path"),
    (["a", "vm1:b", "c"], "sources must be all local or all NAME:PATH"),
    (["vm1:a", "vm2:b", "c"], "several VMs (vm1, vm2)"),
])
def test_bad_copy_arguments_are_usage_errors(paths: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_copy(paths)


@pytest.mark.parametrize(("argv", "words", "options"), [
    (["--", "ls", "--", "-l"], ["ls", "--", "-l"], (None, False, False)),
    (["uname", "-r"], ["uname", "-r"], (None, False, False)),
    ([], [], (None, False, False)),
    (["--timeout", "5", "-n", "--", "cat", "-"], ["cat", "-"], (5.0, True, False)),
    (["--timeout=2.5", "sleep", "9"], ["sleep", "9"], (2.5, False, False)),
    (["-nt", "top"], ["top"], (None, True, True)),
    (["-t"], [], (None, False, True)),
    (["ls", "--timeout", "5"], ["ls", "--timeout", "5"], (None, False, False)),
    (["ls", "--", "-l"], ["ls", "--", "-l"], (None, False, False)),
    (["-n", "--", "--weird"], ["--weird"], (None, True, False)),
])
def test_options_may_follow_the_name_as_with_ssh(
        argv: list[str], words: list[str], options: tuple[float | None, bool, bool]) -> None:
    args = parse("vm", "ssh", "x", *argv)
    assert command_words(args) == words
    assert (args.timeout, args.no_stdin, args.tty) == options


def test_options_before_the_name_work_too() -> None:
    args = parse("vm", "ssh", "--timeout", "7", "x", "--", "true")
    assert (args.name, args.timeout, command_words(args)) == ("x", 7.0, ["true"])


@pytest.mark.parametrize("argv", [
    ["cp", "a", "b"],
    ["cp", "x:a"],
    ["ssh", "x", "--timeout", "soon"],
    ["ssh", "x", "--timeout", "0", "--", "true"],
    ["ssh", "x", "--frobnicate", "--", "true"],
])
def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             argv: list[str]) -> None:
    assert main(["vm", "--state-dir", str(tmp_path / "state"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tmemh: error: ") and err.count("\n") == 1


def test_a_shell_or_copy_for_an_unknown_vm_is_a_runtime_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state")
    for command in (["ssh", "ghost"], ["cp", "ghost:/etc/hostname", str(tmp_path)],
                    ["ssh-config", "ghost"]):
        assert main(["vm", "--state-dir", state, *command]) == 1
        err = capsys.readouterr().err
        assert err.startswith("tmemh: error: no running VM named 'ghost'")
        assert err.count("\n") == 1
    assert main(["vm", "--state-dir", state, "ssh-config"]) == 0  # no VMs: nothing to print
    assert capsys.readouterr().out == ""


@pytest.fixture
def unreachable_vm(tmp_path: Path) -> Iterator[tuple[Path, VMRecord]]:
    """A recorded, "running" VM whose SSH port nobody listens on."""
    key = tmp_path / "id_ed25519"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    state = tmp_path / "state"
    qmp = state / "deaf" / "qmp.sock"
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                 str(qmp)])
    try:
        record = VMRecord(name="deaf", backend="qemu",
                          handle={"pid": stand_in.pid, "qmp_socket": str(qmp)},
                          run_dir=str(qmp.parent), console_log=str(qmp.parent / "console.log"),
                          overlay=str(qmp.parent / "disk.qcow2"), ssh_port=free_loopback_port(),
                          ssh_user="root", ssh_key=str(key), accel="tcg")
        StateDir(state).save(record)
        yield state, record
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_connection_failure_exits_255_like_ssh(
        unreachable_vm: tuple[Path, VMRecord], capsys: pytest.CaptureFixture[str]) -> None:
    state, record = unreachable_vm
    for command in (["--", "true"], []):
        assert main(["vm", "--state-dir", str(state), "ssh", "deaf", *command]) == 255
        err = capsys.readouterr().err
        assert err.startswith(f"tmemh: error: ssh root@127.0.0.1:{record.ssh_port}: ")
        assert err.count("\n") == 1
    assert main(["vm", "--state-dir", str(state), "cp", "deaf:/x", str(state)]) == 1
    assert f"127.0.0.1:{record.ssh_port}" in capsys.readouterr().err


def test_ssh_config_prints_a_host_block_per_vm(
        unreachable_vm: tuple[Path, VMRecord], capsys: pytest.CaptureFixture[str]) -> None:
    state, record = unreachable_vm
    assert main(["vm", "--state-dir", str(state), "ssh-config", "deaf"]) == 0
    named = capsys.readouterr().out
    assert named.splitlines()[:4] == ["Host deaf", "    HostName 127.0.0.1",
                                      f"    Port {record.ssh_port}", "    User root"]
    assert f"    IdentityFile {record.ssh_key}\n" in named
    assert main(["vm", "--state-dir", str(state), "ssh-config"]) == 0  # every running VM
    assert capsys.readouterr().out == named
