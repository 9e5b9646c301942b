"""The arguments of control requests: each converter checks and converts one raw JSON value.

A converter raises :class:`BadRequest` (whose ``kind`` becomes the reply's error type) with a
message that says what was wrong; nothing has been changed by then.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..store.errors import TmemError
from ..units import parse_size
from .sessions import check_vm_name

if TYPE_CHECKING:
    from ..store.tmem import TmemStore

MAX_PAGE = 1000  # entries per listing reply at most


class BadRequest(Exception):
    """A request that is not understood; ``kind`` becomes the error type of the reply."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ----- arguments ---------------------------------------------------------------------------
def size(raw: object) -> int:
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise BadRequest("InvalidArgument", str(exc)) from None


def optional_size(raw: object) -> int | None:
    return None if raw is None else size(raw)


def count(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise BadRequest("InvalidArgument", f"expected an integer >= 0, got {raw!r}")
    return raw


def page_size(raw: object) -> int:
    limit = count(raw)
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest("InvalidArgument", f"limit must be in 1..{MAX_PAGE}, got {limit}")
    return limit


def vm_name(raw: object) -> str:
    try:
        return check_vm_name(raw)
    except TmemError as exc:
        raise BadRequest("InvalidArgument", str(exc)) from None


def owner(raw: object) -> str | int | None:
    if raw is None or (isinstance(raw, int | str) and not isinstance(raw, bool)):
        return raw
    raise BadRequest("InvalidArgument", f"owner must be a user name or a uid, got {raw!r}")


def shared_uuid(raw: object) -> bytes:
    """A shared pool's uuid: 32 hex digits, dashes allowed (``uuid.UUID``'s forms)."""
    try:
        if not isinstance(raw, str):
            raise ValueError
        value = uuidlib.UUID(raw).bytes
    except ValueError:
        raise BadRequest("InvalidArgument", f"uuid must be 32 hex digits, got {raw!r}") from None
    if not any(value):
        raise BadRequest("InvalidArgument", "a shared pool's uuid is not all zero")
    return value


def client_ref(raw: object) -> int | str:
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
    """One argument of an op: how to convert it, and whether it must be given."""

    convert: Callable[[object], Any]
    required: bool = True
