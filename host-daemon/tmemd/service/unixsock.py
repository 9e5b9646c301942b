"""Claiming the path of a listening unix socket: the one helper the VM and control servers share.

A daemon that died leaves its socket file behind; binding to that path fails until the file
is removed. The file may be removed only when nothing listens on it any more (a connect is
refused), and only when it is a socket: a live server's socket or a regular file at that path
is a mistake to report, never something to delete.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

log = logging.getLogger(__name__)


def claim_socket_path(path: str, what: str, error: type[OSError]) -> None:
    """Make ``path`` free to bind: remove a stale socket, or raise ``error`` naming ``what``
    (e.g. "control socket") when the path is not a socket or a server listens there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise error(f"{what} path {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale %s %s", what, path)
            os.unlink(path)
            return
    raise error(f"{what} {path} is in use: another server is listening there")
