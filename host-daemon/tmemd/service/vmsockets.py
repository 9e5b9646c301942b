"""One listening socket per admitted VM, in a directory the daemon owns.

The operator (or the harness) admits a VM by name before it starts (control op ``admit``);
the daemon then listens on ``<vm_socket_dir>/<vm>.sock`` and every connection accepted there
belongs to that VM (see :mod:`tmemd.service.sessions` and docs/trust-model.md). QEMU's
virtio-serial chardev connects to that path.

The directory is created mode 0711 (others may pass through it to a socket they were given,
not list it) and refused when it is a symlink, not a directory, not owned by the daemon's
user, or writable by anyone else: a socket file is only as private as its directory. Each
socket file is mode 0600 from the moment it exists, and handed to ``owner`` (QEMU's user, e.g.
``libvirt-qemu``) when one is given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..store.errors import TmemError
from .sessions import check_vm_name
from .unixsock import claim_socket_path

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o711
SOCKET_MODE = 0o600
SOCKET_SUFFIX = ".sock"
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL
BACKLOG = 16


class AdmissionError(TmemError, OSError):
    """A VM socket cannot be made: unsafe directory, unknown owner, path too long, in use."""


def resolve_owner(owner: str | int | None) -> int | None:
    """The uid for an owner given as a user name, a uid (number or digits), or None."""
    if owner is None:
        return None
    if isinstance(owner, bool) or not isinstance(owner, int | str):
        raise AdmissionError(f"owner must be a user name or a uid, got {owner!r}")
    if isinstance(owner, str) and owner.isdigit():
        owner = int(owner)
    if isinstance(owner, int):
        if not 0 <= owner < 2**32 - 1:
            raise AdmissionError(f"uid {owner} is out of range")
        return owner
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise AdmissionError(f"no user named {owner!r}") from None


def prepare_directory(path: str) -> None:
    """Create ``path`` (mode 0711) if missing, or check that the existing one is safe."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, DIRECTORY_MODE)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise AdmissionError(f"VM socket directory {path} is not a directory (or is a symlink)")
    if info.st_uid != os.geteuid():
        raise AdmissionError(f"VM socket directory {path} belongs to uid {info.st_uid}, not to"
                             f" the daemon's user (uid {os.geteuid()})")
    if stat.S_IMODE(info.st_mode) != DIRECTORY_MODE:
        os.chmod(path, DIRECTORY_MODE)  # ours: mkdir's mode is cut by the umask, or was changed


@dataclass
class _Listener:
    server: asyncio.AbstractServer
    path: str
    inode: int
    owner: int | None


class VmSockets:
    """The listening sockets of admitted VMs; ``factory(vm)`` makes a connection's protocol."""

    def __init__(self, directory: str,
                 factory: Callable[[str], Callable[[], asyncio.BaseProtocol]]) -> None:
        self.directory = directory
        self._factory = factory
        self._listeners: dict[str, _Listener] = {}

    def path(self, vm: str) -> str:
        return os.path.join(self.directory, check_vm_name(vm) + SOCKET_SUFFIX)

    def listening(self, vm: str) -> bool:
        return vm in self._listeners

    def __len__(self) -> int:
        return len(self._listeners)

    async def listen(self, vm: str, owner: int | None) -> str:
        """Listen for ``vm`` (already listening: only the owner is updated); return the path.

        On failure nothing is left behind: no socket file, no listener."""
        path = self.path(vm)
        current = self._listeners.get(vm)
        if current is not None:
            if owner != current.owner:
                _chown(path, owner)
                current.owner = owner
            return path
        if len(path.encode()) > UNIX_PATH_MAX:
            raise AdmissionError(f"socket path {path} is longer than {UNIX_PATH_MAX} bytes;"
                                 " use a shorter vm_socket_dir or VM name")
        try:
            prepare_directory(self.directory)
            claim_socket_path(path, f"socket of vm {vm}", AdmissionError)
        except AdmissionError:
            raise
        except OSError as exc:
            raise AdmissionError(f"VM socket directory {self.directory}: {exc}") from exc
        sock, inode = _bind(path, owner)
        try:
            server = await asyncio.get_running_loop().create_unix_server(
                self._factory(vm), sock=sock)
        except BaseException:
            sock.close()
            _unlink(path, inode)
            raise
        self._listeners[vm] = _Listener(server, path, inode, owner)
        log.info("listening for vm %s on %s%s", vm, path,
                 "" if owner is None else f" (owner uid {owner})")
        return path

    def stop(self, vm: str) -> asyncio.AbstractServer | None:
        """Stop listening for ``vm`` and remove its socket file; returns the closed server
        (to await ``wait_closed`` once its connections are closed), None if not listening."""
        listener = self._listeners.pop(vm, None)
        if listener is None:
            return None
        listener.server.close()
        _unlink(listener.path, listener.inode)
        log.info("stopped listening for vm %s", vm)
        return listener.server

    def stop_all(self) -> list[asyncio.AbstractServer]:
        return [server for vm in list(self._listeners) if (server := self.stop(vm)) is not None]


def _bind(path: str, owner: int | None) -> tuple[socket.socket, int]:
    """A listening socket at ``path``, mode 0600 from its creation, given to ``owner``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # no moment in which others may connect
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        inode = os.stat(path).st_ino
        try:
            os.chmod(path, SOCKET_MODE)
            _chown(path, owner)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            _unlink(path, inode)
            raise
    except AdmissionError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise AdmissionError(f"cannot listen on {path}: {exc}") from exc
    return sock, inode


def _chown(path: str, owner: int | None) -> None:
    """Give the socket file to ``owner`` (None: back to the daemon's own user)."""
    uid = os.geteuid() if owner is None else owner
    try:
        os.chown(path, uid, -1, follow_symlinks=False)
    except OSError as exc:
        raise AdmissionError(f"cannot give {path} to uid {uid}: {exc}") from exc


def _unlink(path: str, inode: int) -> None:
    try:
        if os.lstat(path).st_ino == inode:  # still ours
            os.unlink(path)
    except FileNotFoundError:
        pass
