"""A small synchronous client for tmemd's control socket (see docs/control-protocol.md).

    with ControlClient("/run/tmemd/control.sock") as control:
        control.call("freeze", client="vm1")
        print(control.call("stats")["global"]["curr_pages"])

Error replies raise :class:`ControlRequestError` carrying the server's error type.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 64 << 20


class ControlError(Exception):
    """Talking to the control socket failed."""


class ControlConnectionError(ControlError):
    """The socket cannot be reached, or the connection broke or timed out."""


class ControlProtocolError(ControlError):
    """The daemon sent something that is not a reply to our request."""


class ControlRequestError(ControlError):
    """The daemon refused the request; ``kind`` is the error type it named."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class ControlClient:
    """One connection to a control socket; requests are answered in order."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise ControlConnectionError(f"cannot connect to control socket {path}: {exc}") from exc
        self._stream = self._sock.makefile("rwb")

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its ``result``; raise ControlRequestError on refusal."""
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n"
        try:
            self._stream.write(line)
            self._stream.flush()
            answer = self._stream.readline(MAX_REPLY_BYTES)
        except OSError as exc:  # includes socket.timeout
            raise ControlConnectionError(f"control socket {self.path}: {exc}") from exc
        if not answer.endswith(b"\n"):
            raise ControlConnectionError(f"control socket {self.path}: connection closed")
        reply = self._decode(answer)
        if reply.get("id") != request_id:
            raise ControlProtocolError(f"reply id {reply.get('id')!r}, expected {request_id}")
        if reply.get("ok") is True:
            return reply.get("result")
        error = reply.get("error") or {}
        raise ControlRequestError(str(error.get("type", "Error")), str(error.get("message", "")))

    def _decode(self, answer: bytes) -> dict[str, Any]:
        try:
            reply = json.loads(answer)
        except ValueError as exc:
            raise ControlProtocolError(f"reply is not JSON: {answer[:80]!r}") from exc
        if not isinstance(reply, dict):
            raise ControlProtocolError(f"reply is not a JSON object: {answer[:80]!r}")
        return reply

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
