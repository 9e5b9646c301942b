"""The control socket: JSON lines to inspect and steer a running tmemd.

One request per line, ``{"id": 7, "op": "freeze", "client": "vm1"}``; one reply per line,
``{"id": 7, "ok": true, "result": ...}`` or ``{"id": 7, "ok": false, "error": {"type": ...,
"message": ...}}``. A bad request (also one the JSON parser gives up on: nesting too deep, an
integer too long to convert) gets an error reply, changes nothing and leaves the connection
usable. The protocol is described for users in docs/control-protocol.md.

Besides inspecting and steering the store, the operator says here which VMs exist (``admit``:
a socket of the VM's own; ``dismiss``) and which shared pools each may use (``share_allow``,
``share_deny``); docs/trust-model.md. Listings come in pages, so a reply stays small and quick
however many clients there are.

The server runs on the daemon's event loop, the only thread that touches the store.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import PAGE_SIZE, __version__
from ..store.errors import TmemError
from .controlargs import (
    BadRequest,
    Param,
    client_ref,
    count,
    optional_size,
    owner,
    page_size,
    resolve_client,
    shared_uuid,
    size,
    vm_name,
)
from .sessions import page_of
from .unixsock import claim_socket_path

if TYPE_CHECKING:
    from ..store.tmem import TmemStore
    from .sessions import SessionRegistry
    from .vmserver import VmServer

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
SOCKET_MODE = 0o600
DEFAULT_PAGE = 100  # clients (sessions, VMs) per list or stats reply unless asked otherwise


class ControlTarget(Protocol):
    """What the control server needs from the daemon."""

    store: TmemStore
    registry: SessionRegistry
    server: VmServer

    def request_shutdown(self) -> None: ...

    def forget_client(self, client_id: int) -> dict[str, Any]: ...


class ControlSocketError(OSError):
    """The control socket cannot be created (path in use, not a socket, ...)."""


@dataclass(frozen=True)
class Outcome:
    """A handler's result, and an action to run once the reply is on its way."""

    result: Any
    after_reply: Callable[[], None] | None = None


Handler = Callable[["ControlTarget", dict[str, Any]], Any]


# ----- operations --------------------------------------------------------------------------
def _ping(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    return {"version": __version__, "ops": sorted(OPERATIONS)}


def _list(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    """One page of the clients, of the sessions and of the operator's VM records, each in
    its own order (clients by id, sessions by first hello, VMs by first record), with totals."""
    store, registry = daemon.store, daemon.registry
    offset, limit = args.get("offset", 0), args.get("limit", DEFAULT_PAGE)
    ids = store.clients()
    return {
        "offset": offset,
        "limit": limit,
        "total_clients": len(ids),
        "total_sessions": len(registry),
        "total_vms": len(registry.vm_names()),
        "clients": [store.client_stats(cid) for cid in ids[offset : offset + limit]],
        "sessions": registry.info(offset, limit),
        "vms": registry.vms_info(offset, limit),
    }


def _stats(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    store = daemon.store
    offset, limit = args.get("offset", 0), args.get("limit", DEFAULT_PAGE)
    if args.get("client") is not None:
        ids = [resolve_client(store, args["client"])]
        total = 1
    else:
        every = store.clients()
        ids, total = page_of(every, offset, limit), len(every)
    return {"global": store.stats(), "offset": offset, "limit": limit, "total_clients": total,
            "clients": [store.client_stats(cid) for cid in ids]}


async def _admit(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    return await daemon.server.admit(args["vm"], args.get("owner"))


async def _dismiss(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    return await daemon.server.dismiss(args["vm"])


def _share_allow(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    daemon.registry.share_allow(args["vm"], args["uuid"])
    return {"vm": args["vm"], "uuid": args["uuid"].hex(), "allowed": True}


def _share_deny(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    was = daemon.registry.share_deny(args["vm"], args["uuid"])
    return {"vm": args["vm"], "uuid": args["uuid"].hex(), "allowed": False, "was_allowed": was}


def _set_limit(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    daemon.store.set_memory_limit(args["memory_limit"])
    return {"memory_limit_bytes": daemon.store.arena.limit_frames * PAGE_SIZE}


def _set_cap(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    daemon.store.set_persistent_cap(args["persistent_cap"])
    return {"persistent_cap_bytes": daemon.store.persistent_cap_frames * PAGE_SIZE}


def _set_quota(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    client_id = resolve_client(daemon.store, args["client"])
    daemon.store.set_quota(client_id, args["quota"])
    return {"client_id": client_id, "quota_bytes": args["quota"]}


def _freeze(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    client_id = resolve_client(daemon.store, args["client"])
    daemon.store.freeze(client_id)
    return {"client_id": client_id, "frozen": True}


def _thaw(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    client_id = resolve_client(daemon.store, args["client"])
    daemon.store.thaw(client_id)
    return {"client_id": client_id, "frozen": False}


def _flush_client(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    client_id = resolve_client(daemon.store, args["client"])
    return {"client_id": client_id, "pages_flushed": daemon.store.flush_client(client_id)}


def _forget(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    return daemon.forget_client(resolve_client(daemon.store, args["client"]))


def _shutdown(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    return Outcome({"shutting_down": True}, after_reply=daemon.request_shutdown)


CLIENT = Param(client_ref)
VM = Param(vm_name)
PAGE = {"offset": Param(count, required=False), "limit": Param(page_size, required=False)}
OPERATIONS: dict[str, tuple[Handler, dict[str, Param]]] = {
    "ping": (_ping, {}),
    "list": (_list, PAGE),
    "stats": (_stats, {"client": Param(client_ref, required=False), **PAGE}),
    "set_limit": (_set_limit, {"memory_limit": Param(size)}),
    "set_cap": (_set_cap, {"persistent_cap": Param(optional_size)}),
    "set_quota": (_set_quota, {"client": CLIENT, "quota": Param(optional_size)}),
    "freeze": (_freeze, {"client": CLIENT}),
    "thaw": (_thaw, {"client": CLIENT}),
    "flush_client": (_flush_client, {"client": CLIENT}),
    "forget": (_forget, {"client": CLIENT}),
    "admit": (_admit, {"vm": VM, "owner": Param(owner, required=False)}),
    "dismiss": (_dismiss, {"vm": VM}),
    "share_allow": (_share_allow, {"vm": VM, "uuid": Param(shared_uuid)}),
    "share_deny": (_share_deny, {"vm": VM, "uuid": Param(shared_uuid)}),
    "shutdown": (_shutdown, {}),
}


# ----- requests and replies ----------------------------------------------------------------
def _parse_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """(id, op, converted arguments) of one request line; BadRequest if anything is wrong."""
    try:
        request = json.loads(line)
    except RecursionError:
        raise BadRequest("BadJson", "request is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # also invalid UTF-8, and integers too long to convert
        raise BadRequest("BadJson", f"request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("BadRequest", "request must be a JSON object")
    op = request.get("op")
    if not isinstance(op, str):
        raise BadRequest("BadRequest", "request needs an 'op' string")
    if op not in OPERATIONS:
        raise BadRequest("UnknownOp", f"unknown op {op!r}; known: {', '.join(sorted(OPERATIONS))}")
    params = OPERATIONS[op][1]
    given = {k: v for k, v in request.items() if k not in ("id", "op")}
    unknown = sorted(set(given) - set(params))
    if unknown:
        expected = ", ".join(params) or "no arguments"
        raise BadRequest("BadRequest", f"op {op!r}: unknown argument {unknown[0]!r} ({expected})")
    args: dict[str, Any] = {}
    for name, param in params.items():
        if name in given:
            args[name] = param.convert(given[name])
        elif param.required:
            raise BadRequest("BadRequest", f"op {op!r} needs argument {name!r}")
    return request.get("id"), op, args


def _request_id(line: bytes) -> Any:
    """The id of a request that failed to parse, if it has one (for the error reply)."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return request.get("id") if isinstance(request, dict) else None


def _error(request_id: Any, kind: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"type": kind, "message": message}}


async def handle_request(
    daemon: ControlTarget, line: bytes
) -> tuple[dict[str, Any], Outcome | None]:
    """The reply to one request line (and the outcome, for its after-reply action)."""
    try:
        request_id, op, args = _parse_request(line)
    except BadRequest as exc:
        return _error(_request_id(line), exc.kind, str(exc)), None
    handler = OPERATIONS[op][0]
    try:
        result = handler(daemon, args)
        if inspect.isawaitable(result):
            result = await result
    except BadRequest as exc:
        return _error(request_id, exc.kind, str(exc)), None
    except TmemError as exc:
        return _error(request_id, type(exc).__name__, str(exc)), None
    except Exception as exc:  # a bug: answer, log, and keep serving
        log.exception("control op %r failed", op)
        return _error(request_id, "InternalError", f"{type(exc).__name__}: {exc}"), None
    outcome = result if isinstance(result, Outcome) else Outcome(result)
    log.debug("control op %s %s", op, args)
    return {"id": request_id, "ok": True, "result": outcome.result}, outcome


def encode_reply(reply: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(reply, default=_jsonable, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        # the id itself may be what cannot be encoded (nested too deeply): leave it out
        text = json.dumps(_error(None, "InternalError", f"unencodable reply: {exc}"))
    return text.encode() + b"\n"


def _jsonable(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


# ----- the server --------------------------------------------------------------------------
def _bind_private_socket(path: str) -> tuple[socket.socket, int]:
    """A listening unix socket at ``path`` with mode 0600; returns it and its inode."""
    claim_socket_path(path, "control socket", ControlSocketError)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # no window in which the socket is open to others
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, SOCKET_MODE)
        sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock, os.stat(path).st_ino


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """The next line (b"" at the end); None for a line over the limit, which is skipped."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except asyncio.LimitOverrunError as exc:
        overrun: asyncio.LimitOverrunError | None = exc
    while overrun is not None:  # drop the long line piece by piece, up to its newline
        try:
            await reader.readexactly(overrun.consumed)
            await reader.readuntil(b"\n")
            overrun = None
        except asyncio.IncompleteReadError:
            return b""
        except asyncio.LimitOverrunError as exc:
            overrun = exc
    return None


class ControlServer(asyncio.AbstractServer):
    """The listening control socket and its connections; closing removes the socket file."""

    def __init__(self, path: str, daemon: ControlTarget) -> None:
        self.path = path
        self.daemon = daemon
        self._server: asyncio.AbstractServer | None = None
        self._inode = 0
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock, self._inode = _bind_private_socket(self.path)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect, sock=sock, limit=MAX_REQUEST_BYTES
            )
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("control socket listening on %s", self.path)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await _read_line(reader)
            if line == b"":
                return
            if line is None:
                reply = _error(None, "BadRequest", f"request over {MAX_REQUEST_BYTES} bytes")
                outcome = None
            elif not line.strip():
                continue
            else:
                try:
                    reply, outcome = await handle_request(self.daemon, line)
                except Exception as exc:  # never drop the connection over one request
                    log.exception("control request failed")
                    reply, outcome = _error(None, "InternalError", f"{type(exc).__name__}"), None
            writer.write(encode_reply(reply))
            await writer.drain()
            if outcome is not None and outcome.after_reply is not None:
                outcome.after_reply()

    def _unlink(self) -> None:
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    # asyncio.AbstractServer
    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        self._unlink()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._server is not None
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start_serving(self) -> None:
        return None  # serving starts in start()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()


async def start_control_server(path: str, daemon: ControlTarget) -> asyncio.AbstractServer:
    """Listen for control requests on the unix socket ``path`` (created 0600)."""
    server = ControlServer(path, daemon)
    await server.start()
    return server
