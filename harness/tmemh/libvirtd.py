"""A libvirtd (+ virtlogd) of the harness's own, for machines with no init system (CI, containers).

Two ways to use it: as a context manager for a process that needs libvirt for a while (the
tests: ``with PrivateLibvirtd() as uri: ...``), or as a service that stays up after the call
returns (``tmemh libvirtd start|stop|status``, :func:`ensure_running`, :func:`stop_detached`;
the Ansible host role uses these where systemd is not running).

If a libvirt daemon already answers at ``qemu:///system`` it is used as it is. Otherwise the
helper creates what the daemons need and is missing (the ``libvirt-qemu`` user, a qemu.conf
that runs QEMU as root, runtime and log directories), starts ``virtlogd -d`` and
``libvirtd -d`` with their own PID files, and stops them again, by PID, when the last user
is done.

Several processes may use the context manager at once: each holds a shared lock on ``users.lock``
while it uses the daemon, and whoever releases last (it can take the lock exclusively) stops
the daemons, but only those this helper started (their PIDs are in ``owned.json``), and only
when libvirt holds no domain (a VM left by ``tmemh vm up`` keeps the daemon alive).

If start-up fails half-way (a daemon exits, or libvirtd does not answer in time), the daemons
this call started are stopped again by PID, ``owned.json`` forgets them, and the error carries
the tail of each daemon's log (``<runtime dir>/<program>.log``, warnings and errors).

Changes outside the runtime directory, made only when missing and left in place afterwards:

- ``/etc/libvirt/qemu.conf`` is written (QEMU guests run as root) only if the file does not
  exist; an existing file is never touched.
- the system user ``libvirt-qemu`` is created if it does not exist (libvirt's QEMU driver
  refuses to load without its configured user).
- ``/var/log/libvirt``, ``/var/run/libvirt`` and ``/var/lib/libvirt`` are created if missing.

A separate configuration directory for the private daemon is not possible with libvirt 9.0: a
daemon running as root reads ``qemu.conf`` from the compiled-in ``/etc/libvirt`` (checked in
``libvirt_driver_qemu.so``: ``/etc/libvirt`` + ``%s/qemu.conf``, no environment override), and
``libvirtd -f`` only relocates ``libvirtd.conf``. A second root libvirtd with other sockets
would still share the QEMU driver's state directories with any other libvirtd on the host.

Detached use: :func:`ensure_running` starts the daemons unless libvirt already answers and
takes no user lock, so they outlive the call; :func:`stop_detached` stops the daemons the
helper started (by the PIDs in ``owned.json``) unless a context-manager user still holds its
lock or libvirt holds a domain.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tmemh.files import flocked
from tmemh.procs import pid_alive, stop_pid
from tmemh.vm.errors import BackendUnavailable, VMError
from tmemh.vm.libvirt_backend import open_connection

logger = logging.getLogger(__name__)

SYSTEM_URI = "qemu:///system"
RUNTIME_DIR = Path("/run/tmemh-libvirtd")
QEMU_USER = "libvirt-qemu"
DAEMON_DIRS = (Path("/var/log/libvirt"), Path("/var/run/libvirt"), Path("/var/lib/libvirt"))
VIRTLOGD_SOCKET = Path("/var/run/libvirt/virtlogd-sock")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# QEMU under libvirt runs as root here. With the default user, libvirt finds /dev/kvm
# inaccessible to that user, calls its cached QEMU capabilities stale and re-probes QEMU on
# every call (tens of seconds each while KVM is broken).
QEMU_CONF_TEXT = """# Written by tmemh.libvirtd (the file was missing): run QEMU guests as root.
user = "root"
group = "root"
"""
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# Each daemon logs warnings and errors to <runtime dir>/<program>.log (libvirt's own variable).
LOG_OUTPUTS_VARIABLE = "LIBVIRT_LOG_OUTPUTS"
LOG_LEVEL_WARNING = 3
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class LibvirtdStatus:
    """What the helper knows: whether libvirt answers, and the daemons it started itself."""

    uri: str
    answering: bool
    owned: dict[str, int]
    changed: bool = False  # this call started or stopped a daemon

    def as_dict(self) -> dict[str, object]:
        return {"uri": self.uri, "answering": self.answering, "owned": self.owned,
                "changed": self.changed}


class LibvirtdError(VMError):
    """The private libvirt daemon could not be started or stopped."""


class PrivateLibvirtd:
    """Context manager: ``with PrivateLibvirtd() as uri: ...`` (requires root)."""

    def __init__(self, runtime_dir: Path = RUNTIME_DIR, uri: str = SYSTEM_URI,
                 start_timeout: float = START_TIMEOUT_S) -> None:
        self.runtime_dir = runtime_dir
        self.uri = uri
        self.start_timeout = start_timeout
        self._users: IO[str] | None = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def _owned_path(self) -> Path:
        return self.runtime_dir / "owned.json"

    def start(self) -> str:
        """Make sure a daemon answers at ``self.uri``; return the URI."""
        if self._users is not None:
            return self.uri
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        users = open(self.runtime_dir / "users.lock", "a")
        try:
            with flocked(self.runtime_dir / "start.lock"):
                if not self._reachable():
                    self._start_daemons()
                fcntl.flock(users, fcntl.LOCK_SH)
        except BaseException:
            users.close()
            raise
        self._users = users
        return self.uri

    def stop(self) -> None:
        """Stop using the daemon; the last user stops the daemons this helper started."""
        users, self._users = self._users, None
        if users is None:
            return
        with users, flocked(self.runtime_dir / "start.lock"):
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("libvirtd still in use by another process; leaving it running")
                return
            try:
                self._stop_owned_daemons()
            finally:
                fcntl.flock(users, fcntl.LOCK_UN)

    def ensure_running(self) -> LibvirtdStatus:
        """Start the daemons unless libvirt answers; they stay up after this returns."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        with flocked(self.runtime_dir / "start.lock"):
            started = not self._reachable()
            if started:
                self._start_daemons()
            return LibvirtdStatus(self.uri, True, self._live_owned(), changed=started)

    def stop_detached(self) -> LibvirtdStatus:
        """Stop the daemons this helper started, unless still in use (raises LibvirtdError:
        a context-manager user holds its lock, or libvirt holds a domain)."""
        owned = self._live_owned()
        if not owned:
            return LibvirtdStatus(self.uri, self._reachable(), {})
        with open(self.runtime_dir / "users.lock", "a") as users, \
                flocked(self.runtime_dir / "start.lock"):
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LibvirtdError("libvirtd is in use by another process (it holds "
                                    f"{self.runtime_dir / 'users.lock'}); not stopping it")\
                    from None
            domains = self._domains()
            if domains:
                raise LibvirtdError(f"libvirtd still has domains {domains}; not stopping it")
            self._stop_owned_daemons()
        return LibvirtdStatus(self.uri, self._reachable(), self._live_owned(), changed=True)

    def status(self) -> LibvirtdStatus:
        return LibvirtdStatus(self.uri, self._reachable(), self._live_owned())

    def _live_owned(self) -> dict[str, int]:
        """The daemons in owned.json that still run."""
        return {program: pid for program, pid in self._read_owned().items()
                if _is_program(pid, program)}

    def _reachable(self) -> bool:
        try:
            open_connection(self.uri).close()
        except BackendUnavailable:
            return False
        return True

    def _start_daemons(self) -> None:
        if os.geteuid() != 0:
            raise LibvirtdError("starting a private libvirtd needs root")
        _ensure_qemu_user()
        if not QEMU_CONF.exists():
            logger.info("writing %s (QEMU runs as root)", QEMU_CONF)
            QEMU_CONF.write_text(QEMU_CONF_TEXT)
        for directory in DAEMON_DIRS:
            directory.mkdir(parents=True, exist_ok=True)
        owned = self._read_owned()
        started: dict[str, int] = {}
        try:
            if not _socket_answers(VIRTLOGD_SOCKET):
                started["virtlogd"] = self._start_daemon("virtlogd")
                self._write_owned(owned | started)
            started["libvirtd"] = self._start_daemon("libvirtd")
            self._write_owned(owned | started)
            self._wait_until_reachable()
        except Exception as exc:
            self._abandon_start(owned, started)
            raise LibvirtdError(f"{exc}{self._log_tails(started)}") from exc
        except BaseException:
            self._abandon_start(owned, started)
            raise
        logger.info("private libvirtd running (pids %s)", owned | started)

    def _wait_until_reachable(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self._reachable():
            if time.monotonic() > deadline:
                raise LibvirtdError(f"libvirtd started but {self.uri} does not answer after "
                                    f"{self.start_timeout:.0f} s")
            time.sleep(0.2)

    def _abandon_start(self, owned: dict[str, int], started: dict[str, int]) -> None:
        """Stop, by PID, the daemons a failed start-up started; forget them in owned.json."""
        for program in ("libvirtd", "virtlogd"):
            pid = started.get(program)
            if pid is None:
                continue
            try:
                _stop_pid(program, pid)
            except (LibvirtdError, OSError) as exc:
                logger.error("cannot stop %s (pid %d) after the failed start: %s",
                             program, pid, exc)
        remaining = {name: pid for name, pid in owned.items() if name not in started}
        if remaining:
            self._write_owned(remaining)
        else:
            self._owned_path.unlink(missing_ok=True)

    def _log_path(self, program: str) -> Path:
        return self.runtime_dir / f"{program}.log"

    def _log_tails(self, programs: dict[str, int]) -> str:
        """The last lines of each daemon's log, as text to append to an error message."""
        parts = []
        for program in programs:
            try:
                lines = self._log_path(program).read_text(errors="replace").splitlines()
            except OSError:
                lines = ["(no log)"]
            tail = "\n".join(lines[-LOG_TAIL_LINES:]) or "(log is empty)"
            parts.append(f"\n--- {self._log_path(program)} (last lines) ---\n{tail}")
        return "".join(parts)

    def _start_daemon(self, program: str) -> int:
        pidfile = self.runtime_dir / f"{program}.pid"
        pidfile.unlink(missing_ok=True)
        log = self._log_path(program)
        log.unlink(missing_ok=True)
        environment = os.environ | {LOG_OUTPUTS_VARIABLE: f"{LOG_LEVEL_WARNING}:file:{log}"}
        try:
            result = subprocess.run([program, "-d", "-p", str(pidfile)], capture_output=True,
                                    text=True, timeout=self.start_timeout, check=False,
                                    env=environment)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LibvirtdError(f"cannot start {program}: {exc}") from exc
        if result.returncode != 0:
            raise LibvirtdError(f"{program} -d exited {result.returncode}: "
                                f"{result.stderr.strip()[-500:]}")
        deadline = time.monotonic() + self.start_timeout
        while not pidfile.is_file() or not pidfile.read_text().strip():
            if time.monotonic() > deadline:
                raise LibvirtdError(f"{program} wrote no PID file {pidfile}")
            time.sleep(0.05)
        pid = int(pidfile.read_text().strip())
        logger.info("started %s, pid %d (log %s)", program, pid, log)
        return pid

    def _stop_owned_daemons(self) -> None:
        owned = self._read_owned()
        domains = self._domains() if owned else []
        if domains:
            logger.warning("libvirtd still has domains %s; leaving it running", domains)
            return
        for program in ("libvirtd", "virtlogd"):
            pid = owned.pop(program, None)
            if pid is not None:
                _stop_pid(program, pid)
            self._write_owned(owned)
        self._owned_path.unlink(missing_ok=True)

    def _domains(self) -> list[str]:
        """Names of the domains libvirt knows (running or defined); [] if it does not answer."""
        try:
            connection = open_connection(self.uri)
        except BackendUnavailable:
            return []
        try:
            return [domain.name() for domain in connection.listAllDomains()]
        finally:
            connection.close()

    def _read_owned(self) -> dict[str, int]:
        try:
            data = json.loads(self._owned_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def _write_owned(self, owned: dict[str, int]) -> None:
        self._owned_path.write_text(json.dumps(owned) + "\n")


def _ensure_qemu_user() -> None:
    """libvirt's QEMU driver refuses to start unless its configured user exists."""
    if subprocess.run(["getent", "passwd", QEMU_USER], capture_output=True).returncode == 0:
        return
    logger.info("creating system user %s", QEMU_USER)
    result = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                             "--shell", "/usr/sbin/nologin", QEMU_USER],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LibvirtdError(f"cannot create user {QEMU_USER}: {result.stderr.strip()}")


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _is_program(pid: int, program: str) -> bool:
    """True if ``pid`` is alive and is ``program`` (by its command name)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == program[:15] and pid_alive(pid)


def _stop_pid(program: str, pid: int) -> None:
    """SIGTERM ``pid`` if it still is ``program``; SIGKILL it if it does not go."""
    still_ours = functools.partial(_is_program, program=program)
    if not stop_pid(pid, still_ours, STOP_TIMEOUT_S, poll=0.1):
        raise LibvirtdError(f"{program} pid {pid} did not stop")
    logger.info("stopped %s, pid %d", program, pid)
