"""Reaching guests over SSH: one connection object on fabric, and waiting until a guest answers.

:class:`GuestConnection` wraps a :class:`fabric.Connection` (kept as ``.connection`` for
callers who want fabric's own API). Through it the harness, the CLI, the demo, the workloads
and the collectors run commands (captured, or streamed with stdin passed through:
:mod:`tmemh.sshexec`), copy files and trees both ways with their modes (:mod:`tmemh.sshcopy`)
and open an interactive shell.

Guests are throw-away VMs whose host keys change on every image build, so host keys are
accepted without checking and no ssh_config or known_hosts file is read: the connection only
ever goes to a loopback port forward, with the image's key.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fabric
import paramiko
from paramiko.config import SSHConfig

from . import sshcopy
from .sshexec import (
    ConnectionLost,
    Outcome,
    PtyRequest,
    RemoteProcess,
    RemoteTimeout,
    Sink,
    Source,
    interactive,
)

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
SSH_HOST = "127.0.0.1"


class SSHError(Exception):
    """Base class of the SSH layer's errors."""


class SSHConnectError(SSHError):
    """The guest's SSH server could not be reached, refused the key, or the connection died."""


class SSHKeyError(SSHError):
    """The private key file is missing or unreadable (not worth retrying)."""


class SSHCommandTimeout(SSHError):
    """A remote command did not finish in time (it was stopped)."""


class SSHCommandFailed(SSHError):
    """A remote command run with ``check=True`` exited non-zero."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        super().__init__(f"{result.command!r} exited with {result.exit_code}: "
                         f"{result.stderr.strip()[-500:]}")


class SSHCopyError(SSHError):
    """A copy to or from the guest failed (a missing source, a target that is no directory)."""


@dataclass(frozen=True)
class CommandResult:
    """A finished command's exit code (-1: it ended without one, killed by a signal) and its
    output as text (UTF-8, undecodable bytes replaced)."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class _AcceptHostKey(paramiko.MissingHostKeyPolicy):
    """Accept any host key: guests are ephemeral and reached over a loopback forward only."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        logger.debug("accepting %s host key of %s", key.get_name(), hostname)


def _fabric_config() -> fabric.Config:
    """fabric's defaults only: no ssh_config, no fabric.yaml from /etc or the home directory
    (a user's ``Host *`` settings must not redirect the harness)."""
    return fabric.Config(lazy=True, ssh_config=SSHConfig())


class GuestConnection:
    """One SSH connection to a guest, opened at construction. Use as a context manager, or call
    :meth:`close`. Safe to share between threads: each command gets its own channel."""

    def __init__(self, host: str, port: int, user: str, key_path: Path,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.key_path = Path(key_path)
        try:
            key = paramiko.PKey.from_path(self.key_path)
        except (OSError, ValueError, paramiko.SSHException) as exc:
            raise SSHKeyError(f"cannot load SSH key {self.key_path}: {exc}") from exc
        #: The fabric connection underneath (``.sftp()``, ``.client``, ``.transport``, ...).
        self.connection: Any = fabric.Connection(
            host, user=user, port=port, config=_fabric_config(),
            connect_kwargs={"pkey": key, "allow_agent": False, "look_for_keys": False,
                            "timeout": connect_timeout, "banner_timeout": connect_timeout,
                            "auth_timeout": connect_timeout})
        self.connection.client.set_missing_host_key_policy(_AcceptHostKey())
        try:
            self.connection.open()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.connection.close()
            raise SSHConnectError(f"ssh {self.where}: {exc or type(exc).__name__}") from exc

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def __enter__(self) -> GuestConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    @property
    def is_connected(self) -> bool:
        return bool(self.connection.is_connected)

    def _transport(self) -> paramiko.Transport:
        transport = self.connection.transport
        if transport is None or not transport.is_active():
            raise SSHConnectError(f"ssh session to {self.where} is closed")
        return transport

    # -- commands -------------------------------------------------------------------------

    def start(self, command: str | None, pty: PtyRequest | None = None) -> RemoteProcess:
        """Start ``command`` (None: the login shell) and return it without waiting."""
        try:
            return RemoteProcess(self._transport(), command, pty)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SSHConnectError(f"ssh {self.where}: cannot start {command!r}: {exc}") from exc

    def execute(self, command: str, *, stdin: Source = None, stdout: Sink = None,
                stderr: Sink = None, timeout: float | None = None,
                pty: PtyRequest | None = None) -> Outcome:
        """Run ``command`` in the guest's shell with stdin fed from ``stdin`` and output passed
        to ``stdout``/``stderr`` as it arrives (kept in the outcome where a sink is None).

        No time limit unless ``timeout`` (seconds) is given; past it the command is stopped and
        :class:`SSHCommandTimeout` raised. Ctrl-C (KeyboardInterrupt) sends it SIGINT first.
        A lost connection raises :class:`SSHConnectError`.
        """
        process = self.start(command, pty)
        try:
            outcome = process.communicate(stdin, stdout, stderr, timeout)
        except RemoteTimeout as exc:
            raise SSHCommandTimeout(str(exc)) from None
        except ConnectionLost as exc:
            raise SSHConnectError(f"ssh {self.where}: {exc}") from None
        logger.debug("ssh %s: %r -> %s", self.port, command, outcome.exit_code)
        return outcome

    def run(self, command: str, timeout: float | None = None, check: bool = False,
            stdin: Source = None) -> CommandResult:
        """Run ``command``, keep its output; raise :class:`SSHCommandFailed` if ``check`` and
        it exits non-zero. ``stdin``: bytes, a binary stream or a file descriptor (None: the
        command reads EOF at once)."""
        outcome = self.execute(command, stdin=stdin, timeout=timeout)
        result = CommandResult(command, -1 if outcome.exit_code is None else outcome.exit_code,
                               outcome.stdout.decode(errors="replace"),
                               outcome.stderr.decode(errors="replace"))
        if check and not result.ok:
            raise SSHCommandFailed(result)
        return result

    def shell(self, command: str | None = None, stdin_fd: int = 0,
              stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> int | None:
        """The login shell (or ``command``) on this terminal with a remote pty, as ``ssh -t``
        gives it (see :func:`tmemh.sshexec.interactive`); its exit status (None: none came)."""
        try:
            outcome = interactive(self._transport(), command, stdin_fd, stdout, stderr)
        except (EOFError, paramiko.SSHException) as exc:
            raise SSHConnectError(f"ssh {self.where}: {exc}") from exc
        except ConnectionLost as exc:
            raise SSHConnectError(f"ssh {self.where}: {exc}") from None
        return outcome.exit_code

    # -- files ----------------------------------------------------------------------------

    def _sftp(self) -> paramiko.SFTPClient:
        self._transport()
        try:
            return self.connection.sftp()  # type: ignore[no-any-return]
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SSHConnectError(f"ssh {self.where}: no SFTP session: {exc}") from exc

    def put(self, local: Path, remote: str) -> None:
        """Copy one local file to the path ``remote`` in the guest (mode kept)."""
        self.upload([Path(local)], remote)

    def get(self, remote: str, local: Path) -> None:
        """Copy one guest file ``remote`` to the local path ``local`` (mode kept)."""
        self.download([remote], Path(local))

    def upload(self, sources: Sequence[Path], dest: str) -> list[str]:
        """Copy local files and directory trees into the guest, as ``scp -r`` does: into
        ``dest`` if it is a directory, else to ``dest`` itself (one source only). Modes are
        kept. Returns the guest paths of the copied sources."""
        try:
            return sshcopy.upload(self._sftp(), sources, dest)
        except sshcopy.CopyError as exc:
            raise SSHCopyError(str(exc)) from None

    def download(self, sources: Sequence[str], dest: Path) -> list[Path]:
        """Copy guest files and directory trees to the host, like :meth:`upload` the other
        way round. Returns the local paths of the copied sources."""
        try:
            return sshcopy.download(self._sftp(), sources, Path(dest))
        except sshcopy.CopyError as exc:
            raise SSHCopyError(str(exc)) from None


SSHSession = GuestConnection  # the name this class had before it went over fabric


def ssh_config_block(alias: str, port: int, user: str, key_path: Path,
                     host: str = SSH_HOST) -> str:
    """An OpenSSH client config block for a guest, so ``ssh -F FILE ALIAS``, scp and rsync over
    ssh reach it with the user's own tools."""
    lines = [f"Host {_config_word(alias)}",
             f"HostName {host}",
             f"Port {port}",
             f"User {_config_word(user)}",
             # ssh expands %-tokens in IdentityFile: a literal % is written %%
             f"IdentityFile {_config_word(str(Path(key_path).absolute()).replace('%', '%%'))}",
             "IdentitiesOnly yes",
             "StrictHostKeyChecking no",
             "UserKnownHostsFile /dev/null",
             "LogLevel ERROR"]
    return "\n".join([lines[0], *("    " + line for line in lines[1:])]) + "\n"


def _config_word(value: str) -> str:
    """One ssh_config argument: double-quoted when it has blanks (OpenSSH's own quoting)."""
    if '"' in value or "\n" in value:
        raise ValueError(f"cannot write {value!r} into an ssh_config file")
    return f'"{value}"' if any(c.isspace() for c in value) or not value else value


def wait_for_ssh(host: str, port: int, user: str, key_path: Path, timeout: float,
                 still_starting: Callable[[], None] | None = None,
                 interval: float = 1.0) -> GuestConnection:
    """Retry connecting (and running ``true``) until it works or ``timeout`` seconds pass.

    ``still_starting`` is called before every attempt; it raises to abort the wait (for
    example when the VM process has exited).
    """
    # paramiko logs a traceback for every refused early attempt; keep them out of the way.
    transport_logger = logging.getLogger("paramiko.transport")
    saved_level = transport_logger.level
    transport_logger.setLevel(logging.CRITICAL)
    try:
        return _retry_connect(host, port, user, key_path, timeout, still_starting, interval)
    finally:
        transport_logger.setLevel(saved_level)


def _retry_connect(host: str, port: int, user: str, key_path: Path, timeout: float,
                   still_starting: Callable[[], None] | None,
                   interval: float) -> GuestConnection:
    deadline = time.monotonic() + timeout
    attempts = 0
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if still_starting is not None:
            still_starting()
        attempts += 1
        try:
            guest = GuestConnection(host, port, user, key_path,
                                    connect_timeout=min(10.0, max(1.0,
                                                                  deadline - time.monotonic())))
        except SSHConnectError as exc:
            last_error = exc
            time.sleep(interval)
            continue
        try:
            guest.run("true", timeout=30.0, check=True)
        except SSHError as exc:
            guest.close()
            last_error = exc
            time.sleep(interval)
            continue
        logger.info("ssh to %s:%d ready after %d attempt(s)", host, port, attempts)
        return guest
    raise SSHConnectError(f"ssh {user}@{host}:{port} not ready after {timeout:.0f} s "
                          f"({attempts} attempts; last error: {last_error})")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
