"""Ctrl-C while a remote command runs (a scripted SSH transport; the real one:
tests/real/test_vm_ssh.py): it is never raised inside paramiko, whose locks it could leave
held, and the command is stopped with SIGINT before KeyboardInterrupt reaches the caller."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from support.sigint import default_sigint

from tmemh import sshexec
from tmemh.sshexec import RemoteProcess


class ScriptedChannel:
    def __init__(self, transport: ScriptedTransport) -> None:
        self.transport = transport
        self.status_event = threading.Event()
        self.exit_status = -1
        self.closed = threading.Event()
        self.command = ""

    def exec_command(self, command: str) -> None:
        self.command = command
        if "kill -INT" in command:  # the stopping command: the first one ends, then this
            self.transport.channels[0].end(130)
            self.end(0)

    def end(self, status: int) -> None:
        self.exit_status = status
        self.status_event.set()
        self.closed.set()

    def recv(self, size: int) -> bytes:
        self.closed.wait(10)
        return b""

    recv_stderr = recv

    def shutdown_write(self) -> None:
        """paramiko's own code, holding its locks: where the Ctrl-C lands."""
        if self is self.transport.channels[0] and self.transport.ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bytecode boundaries, where Python runs the handler
                time.sleep(0.0001)

    def get_transport(self) -> ScriptedTransport:
        return self.transport

    def close(self) -> None:
        self.closed.set()


class ScriptedTransport:
    def __init__(self, ctrl_c: bool) -> None:
        self.channels: list[ScriptedChannel] = []
        self.ctrl_c = ctrl_c  # pressed while the first channel's stdin is being closed

    def open_session(self, timeout: float | None = None) -> ScriptedChannel:
        self.channels.append(ScriptedChannel(self))
        return self.channels[-1]

    def is_active(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def sigint_delivered() -> Iterator[None]:
    with default_sigint():
        yield


def test_a_ctrl_c_inside_paramiko_waits_and_stops_the_command_first() -> None:
    transport = ScriptedTransport(ctrl_c=True)
    process = RemoteProcess(transport, "sleep 300")  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        process.communicate(timeout=30)
    command, stopper = transport.channels
    assert "sleep 300" in command.command and command.exit_status == 130
    assert "kill -INT" in stopper.command and process.mark in stopper.command
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_without_a_ctrl_c_the_handler_is_put_back_and_nothing_is_raised() -> None:
    transport = ScriptedTransport(ctrl_c=False)
    process = RemoteProcess(transport, "true")  # type: ignore[arg-type]
    ended = threading.Timer(0.2, lambda: transport.channels[0].end(0))
    ended.start()
    assert process.communicate(timeout=10).exit_code == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class SilentTransport(ScriptedTransport):
    """Opens the command's channel, then no other: the server no longer answers."""

    def open_session(self, timeout: float | None = None) -> ScriptedChannel:
        if self.channels:
            threading.Event().wait(30)
        return super().open_session(timeout)


def test_a_stop_the_server_does_not_answer_gives_up_after_its_limit(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sshexec, "STOP_LIMIT_S", 0.3)
    process = RemoteProcess(SilentTransport(ctrl_c=False), "sleep 300")  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(sshexec.RemoteTimeout):
        process.communicate(timeout=0.2)
    assert time.monotonic() - started < 5
    assert "could not be stopped within 0.3 s" in caplog.text


def test_an_ignored_sigint_stays_ignored() -> None:
    """Started with SIGINT ignored (a background job), the command runs on undisturbed."""
    with default_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        transport = ScriptedTransport(ctrl_c=True)
        process = RemoteProcess(transport, "true")  # type: ignore[arg-type]
        threading.Timer(0.3, lambda: transport.channels[0].end(0)).start()
        assert process.communicate(timeout=10).exit_code == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
