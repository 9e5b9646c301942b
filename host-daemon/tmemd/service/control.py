"""The control socket: JSON lines to inspect and steer a running tmemd.

One request per line, ``{"id": 7, "op": "freeze", "client": "vm1"}``; one reply per line,
``{"id": 7, "ok": true, "result": ...}`` or ``{"id": 7, "ok": false, "error": {"type": ...,
"message": ...}}``. A bad request gets an error reply, changes nothing and leaves the
connection usable. The protocol is described for users in docs/control-protocol.md.

The server runs on the daemon's event loop, the only thread that touches the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import PAGE_SIZE, __version__
from ..store.errors import TmemError
from ..units import parse_size
from .unixsock import claim_socket_path

if TYPE_CHECKING:
    from ..store.tmem import TmemStore

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
SOCKET_MODE = 0o600


class ControlTarget(Protocol):
    """What the control server needs from the daemon."""

    store: TmemStore

    def sessions_info(self) -> list[dict[str, Any]]: ...

    def request_shutdown(self) -> None: ...

    def forget_client(self, client_id: int) -> dict[str, Any]: ...


class ControlSocketError(OSError):
    """The control socket cannot be created (path in use, not a socket, ...)."""


class BadRequest(Exception):
    """A request that is not understood; ``kind`` becomes the error type of the reply."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ----- arguments ---------------------------------------------------------------------------
def _size(raw: object) -> int:
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise BadRequest("InvalidArgument", str(exc)) from None


def _optional_size(raw: object) -> int | None:
    return None if raw is None else _size(raw)


def _client_ref(raw: object) -> int | str:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise BadRequest("InvalidArgument", f"client must be an id or a name, got {raw!r}")
    return raw


def resolve_client(store: TmemStore, ref: int | str) -> int:
    """A client id from an id or a name; a name must match exactly one client."""
    ids = store.clients()
    if isinstance(ref, int):
        if ref in ids:
            return ref
        raise BadRequest("NoSuchClient", f"no client with id {ref}")
    named = [cid for cid in ids if store.client_name(cid) == ref]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise BadRequest("AmbiguousClient", f"{len(named)} clients are named {ref!r}; use an id")
    if ref.isdigit() and int(ref) in ids:
        return int(ref)
    raise BadRequest("NoSuchClient", f"no client named {ref!r}")


@dataclass(frozen=True)
class Param:
    convert: Callable[[object], Any]
    required: bool = True


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
    store = daemon.store
    return {
        "clients": [store.client_stats(cid) for cid in store.clients()],
        "sessions": daemon.sessions_info(),
    }


def _stats(daemon: ControlTarget, args: dict[str, Any]) -> Any:
    store = daemon.store
    if args.get("client") is not None:
        ids = [resolve_client(store, args["client"])]
    else:
        ids = store.clients()
    return {"global": store.stats(), "clients": [store.client_stats(cid) for cid in ids]}


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


CLIENT = Param(_client_ref)
OPERATIONS: dict[str, tuple[Handler, dict[str, Param]]] = {
    "ping": (_ping, {}),
    "list": (_list, {}),
    "stats": (_stats, {"client": Param(_client_ref, required=False)}),
    "set_limit": (_set_limit, {"memory_limit": Param(_size)}),
    "set_cap": (_set_cap, {"persistent_cap": Param(_optional_size)}),
    "set_quota": (_set_quota, {"client": CLIENT, "quota": Param(_optional_size)}),
    "freeze": (_freeze, {"client": CLIENT}),
    "thaw": (_thaw, {"client": CLIENT}),
    "flush_client": (_flush_client, {"client": CLIENT}),
    "forget": (_forget, {"client": CLIENT}),
    "shutdown": (_shutdown, {}),
}


# ----- requests and replies ----------------------------------------------------------------
def _parse_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """(id, op, converted arguments) of one request line; BadRequest if anything is wrong."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
    except ValueError:
        return None
    return request.get("id") if isinstance(request, dict) else None


def _error(request_id: Any, kind: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"type": kind, "message": message}}


def handle_request(daemon: ControlTarget, line: bytes) -> tuple[dict[str, Any], Outcome | None]:
    """The reply to one request line (and the outcome, for its after-reply action)."""
    try:
        request_id, op, args = _parse_request(line)
    except BadRequest as exc:
        return _error(_request_id(line), exc.kind, str(exc)), None
    handler = OPERATIONS[op][0]
    try:
        result = handler(daemon, args)
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
    except (TypeError, ValueError) as exc:
        text = json.dumps(_error(reply.get("id"), "InternalError", f"unencodable reply: {exc}"))
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
                reply, outcome = handle_request(self.daemon, line)
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
