"""``tmem-agent status``: the running agent's counters, as JSON.

The agent answers every connection to its status socket with one JSON document (see
:meth:`tmem_agent.swap.loop.SwapServer.status`) and closes it; this command prints it, with
the counters that processes using userfaultfd regions published in the same run directory
under ``"uffd"`` (:mod:`tmem_agent.uffd.publish`), and under ``"cache"`` the status of every
``tmem-agent cache`` answering on a ``cache-NAME.sock`` there (a cache served inside the agent
itself is already in its document under the same key).
"""

from __future__ import annotations

import glob
import json
import os
import socket
from typing import Any

from .uffd.publish import published

RUN_DIR = "/run/tmem-agent"
STATUS_SOCKET = RUN_DIR + "/status.sock"
MAX_STATUS = 1 << 20


def fetch_status(path: str = STATUS_SOCKET, timeout: float = 10.0) -> dict[str, Any]:
    """The agent's status document; OSError when no agent answers at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        data = bytearray()
        while len(data) < MAX_STATUS:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        status: dict[str, Any] = json.loads(data)
    except ValueError as exc:
        raise OSError(f"the agent at {path} sent no valid status: {exc}") from None
    return status


def gather(path: str = STATUS_SOCKET) -> dict[str, Any]:
    """The agent's status with the uffd counters of its run directory added. With no agent
    answering, OSError, unless uffd processes published counters: then those, and why the
    agent part is missing."""
    uffd = published(os.path.dirname(path))
    caches = cache_status(os.path.dirname(path))
    try:
        status = fetch_status(path)
    except OSError as exc:
        if not uffd["processes"] and not caches:
            raise
        status = {"agent": f"no agent answers at {path}: {exc}"}
    status["uffd"] = uffd
    if caches:
        status.setdefault("cache", {}).update(caches)
    return status


def cache_status(run_dir: str) -> dict[str, Any]:
    """The status of each cache process with a status socket in ``run_dir``, by name (why
    not, for one that does not answer)."""
    found: dict[str, Any] = {}
    for sock in sorted(glob.glob(os.path.join(glob.escape(run_dir), "cache-*.sock"))):
        name = os.path.basename(sock)[len("cache-") : -len(".sock")]
        try:
            found[name] = fetch_status(sock, timeout=5.0)
        except OSError as exc:
            found[name] = {"error": f"no cache answers at {sock}: {exc}"}
    return found


def render(status: dict[str, Any], pretty: bool) -> str:
    return json.dumps(status, indent=2 if pretty else None, sort_keys=pretty)
