"""SSH to guests with paramiko: run commands, copy files, and wait until a guest answers.

Guests are throw-away VMs whose host keys change on every image build, so host keys are
accepted without checking; the connection only ever goes to a loopback port forward.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

logger = logging.getLogger(__name__)

DEFAULT_COMMAND_TIMEOUT_S = 120.0
_POLL_INTERVAL_S = 0.01


class SSHError(Exception):
    """Base class of the SSH layer's errors."""


class SSHConnectError(SSHError):
    """The guest's SSH server could not be reached or refused the key."""


class SSHKeyError(SSHError):
    """The private key file is missing or unreadable (not worth retrying)."""


class SSHCommandTimeout(SSHError):
    """A remote command did not finish in time."""


class SSHCommandFailed(SSHError):
    """A remote command run with ``check=True`` exited non-zero."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        super().__init__(f"{result.command!r} exited with {result.exit_code}: "
                         f"{result.stderr.strip()[-500:]}")


@dataclass(frozen=True)
class CommandResult:
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


class SSHSession:
    """One SSH connection to a guest. Use as a context manager, or call :meth:`close`."""

    def __init__(self, host: str, port: int, user: str, key_path: Path,
                 connect_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.key_path = Path(key_path)
        try:
            key = paramiko.PKey.from_path(self.key_path)
        except (OSError, ValueError, paramiko.SSHException) as exc:
            raise SSHKeyError(f"cannot load SSH key {self.key_path}: {exc}") from exc
        self._client = paramiko.SSHClient()
        self._client.set_missing_host_key_policy(_AcceptHostKey())
        try:
            self._client.connect(host, port=port, username=user, pkey=key,
                                 timeout=connect_timeout, banner_timeout=connect_timeout,
                                 auth_timeout=connect_timeout, allow_agent=False,
                                 look_for_keys=False)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._client.close()
            raise SSHConnectError(f"ssh {user}@{host}:{port}: {exc or type(exc).__name__}") \
                from exc

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def run(self, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
            check: bool = False, stdin: bytes | None = None) -> CommandResult:
        """Run ``command`` in the guest's shell; return its exit code and output."""
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHConnectError(f"ssh session to {self.host}:{self.port} is closed")
        channel = transport.open_session()
        try:
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
            stdout, stderr = _collect(channel, command, timeout)
            exit_code = channel.recv_exit_status()
        finally:
            channel.close()
        result = CommandResult(command, exit_code, stdout.decode(errors="replace"),
                               stderr.decode(errors="replace"))
        logger.debug("ssh %s: %r -> %d", self.port, command, exit_code)
        if check and not result.ok:
            raise SSHCommandFailed(result)
        return result

    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to ``remote`` in the guest."""
        with self._client.open_sftp() as sftp:
            sftp.put(str(local), remote)

    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` from the guest to a local file."""
        with self._client.open_sftp() as sftp:
            sftp.get(remote, str(local))


def _collect(channel: paramiko.Channel, command: str, timeout: float) -> tuple[bytes, bytes]:
    deadline = time.monotonic() + timeout
    out: list[bytes] = []
    err: list[bytes] = []
    while True:
        busy = False
        if channel.recv_ready():
            out.append(channel.recv(65536))
            busy = True
        if channel.recv_stderr_ready():
            err.append(channel.recv_stderr(65536))
            busy = True
        if not busy:
            if channel.exit_status_ready() and not channel.recv_ready() \
                    and not channel.recv_stderr_ready():
                return b"".join(out), b"".join(err)
            if time.monotonic() > deadline:
                raise SSHCommandTimeout(f"{command!r} did not finish within {timeout:.0f} s")
            time.sleep(_POLL_INTERVAL_S)


def wait_for_ssh(host: str, port: int, user: str, key_path: Path, timeout: float,
                 still_starting: Callable[[], None] | None = None,
                 interval: float = 1.0) -> SSHSession:
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
                   still_starting: Callable[[], None] | None, interval: float) -> SSHSession:
    deadline = time.monotonic() + timeout
    attempts = 0
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if still_starting is not None:
            still_starting()
        attempts += 1
        try:
            session = SSHSession(host, port, user, key_path,
                                 connect_timeout=min(10.0, max(1.0, deadline - time.monotonic())))
        except SSHConnectError as exc:
            last_error = exc
            time.sleep(interval)
            continue
        try:
            session.run("true", timeout=30.0, check=True)
        except SSHError as exc:
            session.close()
            last_error = exc
            time.sleep(interval)
            continue
        logger.info("ssh to %s:%d ready after %d attempt(s)", host, port, attempts)
        return session
    raise SSHConnectError(f"ssh {user}@{host}:{port} not ready after {timeout:.0f} s "
                          f"({attempts} attempts; last error: {last_error})")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
