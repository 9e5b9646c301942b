"""One remote process over an SSH transport, driven the way ssh(1) drives it.

Bytes go through untouched: stdin is copied as it is read (bytes, a pipe, a file, a terminal)
and the channel's stdin is closed where it ends; stdout and stderr each have a reader thread
that passes data on as it arrives (to a stream, or into a buffer) and keeps the two apart.
The calling thread sleeps on the readers and on the channel's exit event, with an optional
deadline.

Stopping a command (a timeout, Ctrl-C): OpenSSH's sshd refuses the SSH ``signal`` request for
root logins (it needs privilege separation, which sshd skips for root), and closing the
channel leaves a command that does not read or write running. So each command is started
with a random mark in its environment (``TMEMH_RUN=...``), inherited by everything it starts;
a second command on the same connection signals every process that carries the mark on its
command line (the shell sshd started) or in its environment (TERM or INT, then KILL if they
linger), then the channel is closed.

fabric's ``Connection.run`` is not used for this: its runner (invoke) reads a piped stdin one
byte at a time with a 10 ms nap between reads, decodes each 1000-byte chunk of output on its
own, and without a pty only stops locally on Ctrl-C. fabric makes and keeps the connection
(:class:`tmemh.ssh.GuestConnection`); this module runs the processes on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import BinaryIO

import paramiko

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
STOP_GRACE_S = 3.0  # after a signal, how long the remote process may take to exit
KILL_TIMEOUT_S = 15.0  # for the command that sends the signal
OPEN_TIMEOUT_S = 30.0  # for the server to open a channel (paramiko's own default is an hour)
STOP_LIMIT_S = 45.0  # the most a stop (signal, KILL, close) may keep its caller waiting
MARK_VARIABLE = "TMEMH_RUN"

# What a remote process reads: nothing (its stdin is closed at once), bytes, a binary stream
# or a file descriptor.
Source = bytes | BinaryIO | int | None
# Where its output goes: None keeps it (Outcome.stdout/stderr), else a binary stream.
Sink = BinaryIO | None


class RemoteTimeout(Exception):
    """The remote process did not finish before the deadline (it has been stopped)."""


class ConnectionLost(Exception):
    """The SSH connection went away before the remote process reported its exit."""


@dataclass(frozen=True)
class PtyRequest:
    """A pseudo-terminal for the remote process: terminal type and window size."""

    term: str = "xterm"
    columns: int = 80
    rows: int = 24


@dataclass(frozen=True)
class Outcome:
    """How a remote process ended. ``exit_code`` is None when it ended without an exit status
    (killed by a signal); the output fields hold what was kept (empty when it was streamed)."""

    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""


class CtrlC:
    """SIGINT while a command runs, raised as KeyboardInterrupt only where the calling thread
    just waits (on the reader threads and the exit event); arriving anywhere else, it is kept
    for the next such wait. Raised inside paramiko (the command's first output can arrive
    while the channel's stdin is still being closed), it would skip stopping the command and
    could leave one of the transport's locks held, which the message that stops the command
    then waits for. Only the main thread gets signals, and a SIGINT this process was started
    with ignored (a background job) stays ignored: elsewhere this changes nothing."""

    def __init__(self) -> None:
        self.pending = False
        self._waiting = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Keep SIGINT for :meth:`waiting` inside the block; one that came while nothing
        waited is raised at the block's end."""
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield
            return
        previous = signal.signal(signal.SIGINT, self._arrived)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        if self.pending:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """A block that only waits: a SIGINT, kept or new, is raised here."""
        self._waiting = True
        try:
            if self.pending:
                raise KeyboardInterrupt
            yield
        finally:
            self._waiting = False

    def _arrived(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True
        if self._waiting:
            self._waiting = False
            raise KeyboardInterrupt


class RemoteProcess:
    """A command (or, with ``command=None``, the login shell) started on an open transport."""

    def __init__(self, transport: paramiko.Transport, command: str | None,
                 pty: PtyRequest | None = None, marked: bool = True) -> None:
        self.command = command
        self.transport = transport
        # The login shell gets no mark: it ends with its channel (a pty hangs up, or stdin
        # ends), and the user stops what runs in it.
        self.mark = secrets.token_hex(12) if marked and command is not None else None
        self.channel = transport.open_session(timeout=OPEN_TIMEOUT_S)
        try:
            if pty is not None:
                self.channel.get_pty(term=pty.term, width=pty.columns, height=pty.rows)
            if command is None:
                self.channel.invoke_shell()
            elif self.mark is None:
                self.channel.exec_command(command)
            else:  # on a line of its own: the command may be any shell text, here-documents too
                self.channel.exec_command(f"export {MARK_VARIABLE}={self.mark}\n{command}")
        except BaseException:
            self.channel.close()
            raise
        self._sink_error: OSError | None = None

    def describe(self) -> str:
        return "the login shell" if self.command is None else repr(self.command)

    # -- signals and window ---------------------------------------------------------------

    def send_signal(self, name: str) -> None:
        """Send signal ``name`` (INT, TERM, KILL, ...) to every guest process this command
        started and that still carries its mark (none for the login shell)."""
        if self.mark is None or not self.transport.is_active():
            return
        # The shell sshd started has the mark on its command line (the export line), what it
        # started has it in its environment. "[T]" keeps this script's own shell, whose
        # command line holds the pattern, out of the matches.
        pattern = f"[{MARK_VARIABLE[0]}]{MARK_VARIABLE[1:]}={self.mark}"
        script = (f"pids=$(grep -lsa -- '{pattern}' /proc/[0-9]*/environ /proc/[0-9]*/cmdline"
                  f" | cut -d/ -f3 | sort -u); [ -z \"$pids\" ] || kill -{name} $pids "
                  f"2>/dev/null; true")
        try:
            killer = RemoteProcess(self.transport, script, marked=False)
            killer.communicate(timeout=KILL_TIMEOUT_S)
        except (OSError, EOFError, paramiko.SSHException, RemoteTimeout, ConnectionLost) as exc:
            logger.debug("cannot send SIG%s to %s: %s", name, self.describe(), exc)

    def resize(self, columns: int, rows: int) -> None:
        """Pass a new terminal window size on (only meaningful with a pty)."""
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.channel.resize_pty(width=columns, height=rows)

    def stop(self, first_signal: str = "TERM", grace: float = STOP_GRACE_S) -> None:
        """Signal the remote process, KILL it if it is still there after ``grace``, close.

        Done by a helper thread, waited for at most ``STOP_LIMIT_S``: a server that does not
        answer must not keep the caller (a Ctrl-C, a timeout) from going on."""
        helper = threading.Thread(target=self._stop, args=(first_signal, grace),
                                  name="ssh-stop", daemon=True)
        helper.start()
        helper.join(STOP_LIMIT_S)
        if helper.is_alive():
            logger.warning("%s could not be stopped within %g s (the guest's sshd does not "
                           "answer); it may still run", self.describe(), STOP_LIMIT_S)

    def _stop(self, first_signal: str, grace: float) -> None:
        try:
            self.send_signal(first_signal)
            if not self.channel.status_event.wait(grace):
                self.send_signal("KILL")
                self.channel.status_event.wait(grace)
        finally:
            self.channel.close()

    def close(self) -> None:
        self.channel.close()

    # -- running --------------------------------------------------------------------------

    def communicate(self, stdin: Source = None, stdout: Sink = None, stderr: Sink = None,
                    timeout: float | None = None) -> Outcome:
        """Feed ``stdin``, pass output on as it comes, wait for the end; close the channel.

        Raises :class:`RemoteTimeout` after ``timeout`` seconds and :class:`ConnectionLost` if
        the transport died; a failing sink (e.g. a closed pipe) raises its OSError. Either way,
        and on KeyboardInterrupt (after SIGINT to the remote process), the process is stopped.
        """
        ctrl_c = CtrlC()
        with ctrl_c.deferred():  # a Ctrl-C after the command ended is raised at its end
            return self._communicate(stdin, stdout, stderr, timeout, ctrl_c)

    def _communicate(self, stdin: Source, stdout: Sink, stderr: Sink, timeout: float | None,
                     ctrl_c: CtrlC) -> Outcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        kept_out: list[bytes] = []
        kept_err: list[bytes] = []
        readers = [
            threading.Thread(target=self._drain, args=(self.channel.recv, stdout, kept_out),
                             name="ssh-stdout", daemon=True),
            threading.Thread(target=self._drain, args=(self.channel.recv_stderr, stderr,
                                                       kept_err),
                             name="ssh-stderr", daemon=True),
        ]
        for reader in readers:
            reader.start()
        self._start_feeding(stdin)
        try:
            with ctrl_c.waiting():
                finished = self._wait(readers, deadline)
        except KeyboardInterrupt:
            logger.debug("interrupted: SIGINT to %s", self.describe())
            self.stop("INT")
            raise
        if not finished:
            self.stop("TERM")
            raise RemoteTimeout(f"{self.describe()} did not finish within {timeout:g} s")
        transport = self.channel.get_transport()
        status = self.channel.exit_status
        self.channel.close()
        if self._sink_error is not None:  # its output has nowhere to go: stop it
            self.send_signal("TERM")
            raise self._sink_error
        if status == -1 and (transport is None or not transport.is_active()):
            raise ConnectionLost(f"the connection closed before {self.describe()} ended")
        return Outcome(None if status == -1 else status, b"".join(kept_out), b"".join(kept_err))

    def _wait(self, readers: list[threading.Thread], deadline: float | None) -> bool:
        """Block until both output streams ended and the exit status came (True), or until
        ``deadline`` (False). Sleeps on the threads and the channel's event; no polling."""
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.channel.status_event.wait(left)

    def _drain(self, receive: Callable[[int], bytes], sink: Sink, kept: list[bytes]) -> None:
        try:
            while data := receive(CHUNK):
                if sink is None:
                    kept.append(data)
                else:
                    sink.write(data)
                    sink.flush()
        except OSError as exc:  # the sink is gone (a closed pipe): stop the command, as ssh
            self._sink_error = exc  # dies of SIGPIPE
            self.channel.close()
        except (EOFError, paramiko.SSHException) as exc:
            logger.debug("output of %s ended: %s", self.describe(), exc)

    def _start_feeding(self, source: Source) -> None:
        if source is None:
            self.channel.shutdown_write()
            return
        threading.Thread(target=self._feed, args=(source,), name="ssh-stdin", daemon=True).start()

    def _feed(self, source: bytes | BinaryIO | int) -> None:
        """Copy ``source`` to the channel's stdin, then close it (the remote side sees EOF).

        A file descriptor, or a stream that has one, is read with os.read: whatever is there
        goes on at once (a line typed, a pipe's next chunk). The thread is a daemon: if the
        command ends first, a read that never returns (a terminal) does not hold anyone up.
        """
        try:
            for chunk in _chunks(source):
                self.channel.sendall(chunk)
            self.channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:  # the command stopped reading
            logger.debug("stdin of %s not passed on to the end: %s", self.describe(), exc)


def _chunks(source: bytes | BinaryIO | int) -> Iterator[bytes]:
    """``source`` in pieces of at most CHUNK bytes; a source that cannot be read (a closed
    descriptor) ends like an empty one."""
    if isinstance(source, bytes):
        for start in range(0, len(source), CHUNK):
            yield source[start:start + CHUNK]
        return
    read = _reader(source)
    while True:
        try:
            chunk = read(CHUNK)
        except (OSError, ValueError) as exc:
            logger.debug("stdin unreadable, taken as ended: %s", exc)
            return
        if not chunk:
            return
        yield chunk


def _reader(source: BinaryIO | int) -> Callable[[int], bytes]:
    if isinstance(source, int):
        return lambda size: os.read(source, size)
    try:
        fd = source.fileno()
    except (OSError, AttributeError, ValueError):
        read1 = getattr(source, "read1", None)
        return read1 if callable(read1) else source.read
    return lambda size: os.read(fd, size)


# -- the interactive shell ----------------------------------------------------------------

def terminal_size(fd: int) -> tuple[int, int]:
    """(columns, rows) of the terminal on ``fd``; 80x24 if it has none."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return size.columns or 80, size.lines or 24


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode (every key, Ctrl-C included, goes to the remote pty),
    restored to its former settings on the way out whatever happens."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


@contextlib.contextmanager
def following_window(process: RemoteProcess, fd: int) -> Iterator[None]:
    """Pass the local terminal's size on to ``process`` whenever it changes (SIGWINCH)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def changed(signum: int, frame: FrameType | None) -> None:
        process.resize(*terminal_size(fd))

    previous = signal.signal(signal.SIGWINCH, changed)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def interactive(transport: paramiko.Transport, command: str | None = None, stdin_fd: int = 0,
                stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
                term: str | None = None) -> Outcome:
    """``command`` (None: the login shell) on this terminal, as ``ssh -t HOST [CMD]`` runs it.

    With a terminal on ``stdin_fd``: a remote pty of the same size (and later sizes), the local
    terminal in raw mode until the remote side ends. Without one: no pty, stdin passed through
    (a shell then reads its commands from it), as ssh does.
    """
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    if not os.isatty(stdin_fd):
        return RemoteProcess(transport, command).communicate(stdin_fd, out, err)
    size_fd = out.fileno() if _has_terminal(out) else stdin_fd
    columns, rows = terminal_size(size_fd)
    pty = PtyRequest(term or os.environ.get("TERM") or "xterm", columns, rows)
    process = RemoteProcess(transport, command, pty)
    with raw_terminal(stdin_fd), following_window(process, size_fd):
        return process.communicate(stdin_fd, out, err)


def _has_terminal(stream: BinaryIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, AttributeError, ValueError):
        return False
