"""Guest access the way people use ssh, against one real VM booted for the whole module.

`tmemh vm ssh` with stdin, live and separate output, exit codes, timeouts and Ctrl-C; the
interactive shell through a pseudo-terminal; `tmemh vm cp` both ways; `tmemh vm ssh-config`
with the OpenSSH client; the same from Python. One boot: the module's fixture starts the VM
(and, right after, the 125-second command whose result the last test checks, so its wait
overlaps the other tests) and tears it down, checking that no process of it is left.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.leftovers import kill_leftovers
from support.sigint import default_sigint

from tmemh.image.manifest import ImageManifest
from tmemh.ssh import SSHCommandTimeout, free_loopback_port
from tmemh.vm import VirtualMachine, VMSpec
from tmemh.vm.state import StateDir

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="the guest image needs root")]

NAME = "ssh-vm"
LONG_SECONDS = 125  # longer than the 120 s every command used to be cut off at
MiB = 1024 * 1024


@dataclass
class Guest:
    vm: VirtualMachine
    state: Path
    long_command: subprocess.Popen[bytes]
    long_started: float


def tmemh(state: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """``tmemh vm --state-dir STATE ARGS`` with stdin from /dev/null unless given."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("timeout", 300)
    return subprocess.run(tmemh_argv(state, *args), check=False, **kwargs)  # type: ignore


def tmemh_argv(state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tmemh.cli", "vm", "--state-dir", str(state), *args]


@pytest.fixture(scope="module")
def guest(guest_image: ImageManifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    state = tmp_path_factory.mktemp("ssh") / "vms"
    try:
        with VirtualMachine(VMSpec(name=NAME, memory_mib=512), guest_image, backend="qemu",
                            state_dir=state) as vm:
            long_command = subprocess.Popen(
                tmemh_argv(state, "ssh", NAME, "--", f"sleep {LONG_SECONDS}; echo slept"),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                yield Guest(vm, state, long_command, time.monotonic())
            finally:
                if long_command.poll() is None:
                    long_command.kill()
                long_command.communicate()
    finally:
        leftovers = kill_leftovers(str(state))
        assert leftovers == [], f"processes left running: {leftovers}"


def guest_sha256(guest: Guest, path: str) -> str:
    return guest.vm.run(f"sha256sum {path}", check=True).stdout.split()[0]


def no_guest_process(guest: Guest, pattern: str) -> bool:
    """True if no guest process's command line matches ``pattern`` (a pgrep -f regex)."""
    return guest.vm.run(f"pgrep -f '{pattern}'").exit_code == 1


# -- vm ssh -----------------------------------------------------------------------------------

def test_stdin_round_trip_is_byte_exact(guest: Guest, tmp_path: Path) -> None:
    payload = os.urandom(4 * MiB + 123)
    digest = hashlib.sha256(payload).hexdigest()
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    started = time.monotonic()
    with open(source, "rb") as stdin:  # from a file
        sent = tmemh(guest.state, "ssh", NAME, "--", "cat > /root/f", stdin=stdin)
    print(f"4 MiB in through stdin: {time.monotonic() - started:.1f} s")
    assert sent.returncode == 0, sent.stderr
    assert guest_sha256(guest, "/root/f") == digest
    back = tmemh(guest.state, "ssh", NAME, "--", "cat /root/f")
    assert back.returncode == 0 and hashlib.sha256(back.stdout).hexdigest() == digest

    piped = tmemh(guest.state, "ssh", NAME, "--", "sha256sum", input=payload[:MiB],
                  stdin=None)  # from a pipe
    assert piped.returncode == 0
    assert piped.stdout.split()[0].decode() == hashlib.sha256(payload[:MiB]).hexdigest()
    # from Python, bytes in and out
    assert guest.vm.run("wc -c", stdin=payload).stdout.strip() == str(len(payload))


def test_output_streams_live_and_apart(guest: Guest) -> None:
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 1; done"
    started = time.monotonic()
    process = subprocess.Popen(tmemh_argv(guest.state, "ssh", NAME, "--", script),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None
    first = process.stdout.readline()
    first_at = time.monotonic() - started
    rest, errors = process.communicate(timeout=120)
    ended_at = time.monotonic() - started
    print(f"first line after {first_at:.1f} s, end after {ended_at:.1f} s")
    assert process.returncode == 0
    assert first + rest == b"".join(b"out%d\n" % i for i in range(1, 6))
    assert errors == b"".join(b"err%d\n" % i for i in range(1, 6))
    assert ended_at - first_at >= 3.0  # the first line came ~4 s before the end


def test_exit_codes(guest: Guest) -> None:
    assert tmemh(guest.state, "ssh", NAME, "--", "true").returncode == 0
    assert tmemh(guest.state, "ssh", NAME, "--", "exit 3").returncode == 3
    assert tmemh(guest.state, "ssh", NAME, "exit", "7").returncode == 7  # no -- needed


def test_a_connection_failure_exits_255(guest: Guest) -> None:
    """A record of the running VM under another name, pointing at a port nobody serves."""
    states = StateDir(guest.state)
    record = states.load(NAME)
    assert record is not None
    record.name, record.ssh_port = "no-sshd", free_loopback_port()
    states.save(record)
    try:
        failed = tmemh(guest.state, "ssh", "no-sshd", "--", "true")
    finally:
        states.remove("no-sshd")
        states.run_dir("no-sshd").rmdir()
    assert failed.returncode == 255
    assert failed.stderr.decode().startswith(
        f"tmemh: error: ssh root@127.0.0.1:{record.ssh_port}: ")
    assert failed.stderr.count(b"\n") == 1


def test_timeout_stops_the_command(guest: Guest) -> None:
    started = time.monotonic()
    timed = tmemh(guest.state, "ssh", NAME, "--timeout", "3", "--", "sleep 61; echo late")
    took = time.monotonic() - started
    assert timed.returncode == 124, timed.stderr
    assert timed.stderr == b"tmemh: error: 'sleep 61; echo late' did not finish within 3 s\n"
    assert timed.stdout == b"" and 3 <= took < 30
    assert no_guest_process(guest, "sleep 6[1]")
    with pytest.raises(SSHCommandTimeout):  # the same from Python
        guest.vm.run("sleep 62", timeout=2)
    assert no_guest_process(guest, "sleep 6[2]")


def test_ctrl_c_stops_the_remote_command(guest: Guest) -> None:
    with default_sigint():  # not inherited as ignored (a test run in the background)
        process = subprocess.Popen(
            tmemh_argv(guest.state, "ssh", NAME, "--", "echo started; sleep 301; echo never"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"started\n"
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 130
    assert rest == b"" and errors == b"tmemh: interrupted\n"
    assert no_guest_process(guest, "sleep 30[1]")


# -- the interactive shell -------------------------------------------------------------------

class Terminal:
    """A pseudo-terminal with ``tmemh vm ssh NAME`` on it, read with a deadline."""

    def __init__(self, argv: list[str], rows: int, columns: int) -> None:
        self.master, slave = os.openpty()
        self.resize(rows, columns, fd=slave)

        def controlling_terminal() -> None:  # so the kernel sends SIGWINCH on a resize
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                        start_new_session=True,
                                        preexec_fn=controlling_terminal)
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, columns: int, fd: int | None = None) -> None:
        fcntl.ioctl(self.master if fd is None else fd, termios.TIOCSWINSZ,
                    struct.pack("HHHH", rows, columns, 0, 0))

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, text: str, timeout: float = 60) -> str:
        """Read until ``text`` has come; return everything up to it."""
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                raise AssertionError(f"{text!r} did not come; last output: {self.seen[-500:]!r}")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError as exc:  # the other side closed
                raise AssertionError(f"{text!r} did not come before EOF: {self.seen[-500:]!r}") \
                    from exc
        cut = self.seen.index(wanted) + len(wanted)
        before, self.seen = self.seen[:cut], self.seen[cut:]
        return before.decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        os.close(self.master)


def test_interactive_shell_on_a_pty(guest: Guest) -> None:
    terminal = Terminal(tmemh_argv(guest.state, "ssh", NAME), rows=33, columns=111)
    try:
        terminal.expect("# ")  # root's prompt
        assert not termios.tcgetattr(terminal.master)[3] & termios.ECHO  # raw mode
        terminal.send("echo hi-$((6*7))\r")
        terminal.expect("hi-42")
        terminal.send("tty; stty size\r")
        terminal.expect("/dev/pts/")
        terminal.expect("33 111")  # the window size was passed
        terminal.resize(40, 132)
        time.sleep(0.5)  # the SIGWINCH and the window-change request are on their way
        terminal.send("stty size\r")
        terminal.expect("40 132")
        terminal.expect("# ")
        terminal.send("sleep 302\r")
        time.sleep(1)
        terminal.send("\x03")  # Ctrl-C goes to the remote terminal, not to tmemh
        terminal.expect("^C")
        terminal.expect("# ")
        terminal.send("exit 5\r")
        assert terminal.process.wait(60) == 5
        attrs = termios.tcgetattr(terminal.master)
        assert attrs[3] & termios.ECHO and attrs[3] & termios.ICANON  # restored, not raw
    finally:
        terminal.close()
    assert no_guest_process(guest, "sleep 30[2]")


# -- vm cp -------------------------------------------------------------------------------------

def make_tree(root: Path) -> dict[str, tuple[int, str]]:
    """A small tree with various modes; returns {relative path: (mode, sha256 or "dir")}."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    files = {"a.txt": (b"alpha\n", 0o604), "sub/blob.bin": (os.urandom(300_000), 0o640),
             "sub/deeper/run.sh": (b"#!/bin/sh\necho ran\n", 0o750),
             "sub/deeper/readonly": (b"r\n", 0o444)}
    for name, (data, mode) in files.items():
        (root / name).write_bytes(data)
        (root / name).chmod(mode)
    (root / "sub").chmod(0o710)
    return describe_tree(root)


def describe_tree(root: Path) -> dict[str, tuple[int, str]]:
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.stat()
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(root))] = (stat.S_IMODE(info.st_mode), digest)
    return found


GUEST_DESCRIBE = ("cd {} && python3 -c 'import hashlib, json, os, pathlib, stat; "
                  "print(json.dumps({{str(p): [stat.S_IMODE(p.stat().st_mode), \"dir\" if "
                  "p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()] "
                  "for p in sorted(pathlib.Path(\".\").rglob(\"*\"))}}))'")


def test_cp_trees_in_and_out_keep_content_and_modes(guest: Guest, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected = make_tree(tree)
    started = time.monotonic()
    sent = tmemh(guest.state, "cp", str(tree), f"{NAME}:/root/")
    print(f"tree in: {time.monotonic() - started:.1f} s")
    assert sent.returncode == 0, sent.stderr
    listed = guest.vm.run(GUEST_DESCRIBE.format("/root/tree"), check=True).stdout
    assert {k: tuple(v) for k, v in json.loads(listed).items()} == expected
    assert guest.vm.run("/root/tree/sub/deeper/run.sh", check=True).stdout == "ran\n"

    back = tmp_path / "back"
    back.mkdir()
    fetched = tmemh(guest.state, "cp", f"{NAME}:/root/tree", f"{NAME}:~/tree/a.txt", str(back))
    assert fetched.returncode == 0, fetched.stderr
    assert describe_tree(back / "tree") == expected
    assert (back / "a.txt").read_bytes() == b"alpha\n"

    renamed = tmp_path / "renamed.txt"  # a single file to a new name
    assert tmemh(guest.state, "cp", f"{NAME}:tree/sub/deeper/run.sh", str(renamed)).returncode == 0
    assert stat.S_IMODE(renamed.stat().st_mode) == 0o750

    missing = tmemh(guest.state, "cp", f"{NAME}:/no/such", str(back))
    assert missing.returncode == 1
    assert missing.stderr.startswith(b"tmemh: error: guest /no/such: ")


def test_copies_from_python(guest: Guest, tmp_path: Path) -> None:
    tree = tmp_path / "pytree"
    expected = make_tree(tree)
    assert guest.vm.upload([tree], "/tmp") == ["/tmp/pytree"]
    out = tmp_path / "out"
    assert guest.vm.download(["/tmp/pytree"], out) == [out]  # a new name: the tree itself
    assert describe_tree(out) == expected


# -- vm ssh-config -----------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_openssh_reaches_the_vm_with_the_printed_config(guest: Guest, tmp_path: Path) -> None:
    printed = tmemh(guest.state, "ssh-config", NAME)
    assert printed.returncode == 0 and printed.stdout.startswith(f"Host {NAME}\n".encode())
    config = tmp_path / "ssh_config"
    config.write_bytes(printed.stdout)
    ssh = subprocess.run(["ssh", "-F", str(config), NAME, "hostname; exit 6"],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                         check=False)
    assert ssh.returncode == 6 and ssh.stdout.strip() and ssh.stderr == b""
    if shutil.which("rsync") is None:
        return  # the guest has rsync; the host may not
    source = tmp_path / "r"
    make_tree(source)
    synced = subprocess.run(["rsync", "-a", "-e", f"ssh -F {config}", f"{source}/",
                             f"{NAME}:/root/rsynced/"], capture_output=True, timeout=120,
                            check=False)
    assert synced.returncode == 0, synced.stderr


# -- library ---------------------------------------------------------------------------------

def test_the_guest_connection_streams_into_any_binary_sink(guest: Guest) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    outcome = guest.vm.ssh().execute("printf 'a\\0b'; printf e >&2; exit 9", stdout=out,
                                     stderr=err)
    assert (outcome.exit_code, out.getvalue(), err.getvalue()) == (9, b"a\0b", b"e")
    assert outcome.stdout == b"" and outcome.stderr == b""  # streamed, not kept


def test_a_command_may_run_longer_than_120_s_without_timeout(guest: Guest) -> None:
    """Slow on purpose: a 125-second command, past the 120 s every command used to be cut off
    at. The module's fixture started it right after the boot, so most of the wait overlapped
    the other tests; run alone, this test waits the whole time."""
    out, err = guest.long_command.communicate(timeout=LONG_SECONDS + 120)
    took = time.monotonic() - guest.long_started
    print(f"the {LONG_SECONDS} s command ended after {took:.0f} s")
    assert guest.long_command.returncode == 0, err
    assert out == b"slept\n" and took >= LONG_SECONDS
