"""The NBD protocol as far as the swap shim speaks it: constants, packed layouts, and the
server's side of the fixed newstyle handshake.

Standard library only. All NBD integers are big-endian. The handshake supports what Debian's
``nbd-client`` (3.24, netlink mode) and the kernel need: ``NBD_OPT_GO`` (and ``NBD_OPT_INFO``)
with an export name, ``NBD_OPT_EXPORT_NAME`` for older clients, ``NBD_OPT_LIST`` and
``NBD_OPT_ABORT``; any other option is answered "unsupported". Transmission uses simple
replies only (no structured replies are negotiated).
"""

from __future__ import annotations

import enum
import logging
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

INIT_MAGIC = b"NBDMAGIC"
OPTS_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

# handshake flags (server) and client flags
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
CLIENT_FIXED_NEWSTYLE = 1
CLIENT_NO_ZEROES = 2

# transmission flags
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1


class Opt(enum.IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8


class Rep(enum.IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_UNKNOWN = (1 << 31) + 6


class Info(enum.IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Cmd(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6


class Err(enum.IntEnum):
    """Error values of a reply (the protocol's own numbering, Linux errno values)."""

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


REQUEST = struct.Struct(">IHHQQI")  # magic, command flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
OPTION = struct.Struct(">QII")  # magic, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
EXPORT_INFO = struct.Struct(">HQH")  # info type 0, size, transmission flags
BLOCK_SIZE_INFO = struct.Struct(">HIII")  # info type 3, minimum, preferred, maximum
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")

MAX_OPTION_DATA = 4096  # longer option payloads are refused (names are short)
HANDSHAKE_TIMEOUT = 10.0


class HandshakeError(Exception):
    """The client broke the protocol or went away during the handshake."""


@dataclass(frozen=True)
class Export:
    """What the server offers: one named device of ``size`` bytes."""

    name: str
    size: int
    flags: int = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES
    block_size: int = 4096
    max_request: int = 1 << 20  # the preferred largest request, told to clients that ask


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise HandshakeError("client closed the connection during the handshake")
        data += chunk
    return bytes(data)


def _reply(sock: socket.socket, option: int, rep: int, data: bytes = b"") -> None:
    sock.sendall(OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, rep, len(data)) + data)


def _parse_info_request(data: bytes) -> tuple[str, list[int]]:
    """(export name, info types asked for) of an NBD_OPT_INFO / NBD_OPT_GO payload."""
    if len(data) < 4:
        raise ValueError("too short for a name length")
    (name_len,) = U32.unpack_from(data)
    if 4 + name_len + 2 > len(data):
        raise ValueError("name runs past the option")
    name = data[4 : 4 + name_len].decode("utf-8")
    (count,) = U16.unpack_from(data, 4 + name_len)
    start = 4 + name_len + 2
    if start + 2 * count != len(data):
        raise ValueError("information request list does not fit the option")
    return name, [U16.unpack_from(data, start + 2 * i)[0] for i in range(count)]


def serve_handshake(sock: socket.socket, exports: dict[str, Export],
                    timeout: float = HANDSHAKE_TIMEOUT) -> Export | None:
    """Run the server's side of the fixed newstyle handshake on a connected socket.

    Returns the export the client chose, with the socket now in the transmission phase, or
    None when the client aborted or asked for an unknown export by NBD_OPT_EXPORT_NAME (the
    caller closes the socket). Raises :class:`HandshakeError` on a protocol violation.
    """
    sock.settimeout(timeout)
    try:
        sock.sendall(INIT_MAGIC + U64.pack(OPTS_MAGIC)
                     + U16.pack(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = U32.unpack(_recv_exact(sock, 4))
        if not client_flags & CLIENT_FIXED_NEWSTYLE:
            raise HandshakeError("client does not speak the fixed newstyle handshake")
        no_zeroes = bool(client_flags & CLIENT_NO_ZEROES)
        while True:
            magic, option, length = OPTION.unpack(_recv_exact(sock, OPTION.size))
            if magic != OPTS_MAGIC:
                raise HandshakeError(f"bad option magic {magic:#x}")
            if length > MAX_OPTION_DATA:
                raise HandshakeError(f"option {option} with {length} bytes of data")
            data = _recv_exact(sock, length)
            chosen = _handle_option(sock, exports, option, data, no_zeroes)
            if chosen is not None:
                return chosen if isinstance(chosen, Export) else None
    except (TimeoutError, OSError) as exc:
        raise HandshakeError(f"handshake failed: {exc}") from exc
    finally:
        if sock.fileno() >= 0:
            sock.settimeout(None)


def _handle_option(sock: socket.socket, exports: dict[str, Export], option: int, data: bytes,
                   no_zeroes: bool) -> Export | bool | None:
    """Answer one option. An Export ends the handshake (transmission), False ends it without
    one, None means "read the next option"."""
    if option == Opt.EXPORT_NAME:
        export = exports.get(data.decode("utf-8", "replace"))
        if export is None:
            log.info("client asked for unknown export %r (EXPORT_NAME): closing", data)
            return False
        tail = b"" if no_zeroes else bytes(124)
        sock.sendall(U64.pack(export.size) + U16.pack(export.flags) + tail)
        return export
    if option == Opt.ABORT:
        try:
            _reply(sock, option, Rep.ACK)
        except OSError:
            pass  # the client may close without reading the acknowledgement
        return False
    if option == Opt.LIST:
        if data:
            _reply(sock, option, Rep.ERR_INVALID)
            return None
        for name in exports:
            encoded = name.encode()
            _reply(sock, option, Rep.SERVER, U32.pack(len(encoded)) + encoded)
        _reply(sock, option, Rep.ACK)
        return None
    if option in (Opt.INFO, Opt.GO):
        try:
            name, wanted = _parse_info_request(data)
        except (ValueError, UnicodeDecodeError) as exc:
            _reply(sock, option, Rep.ERR_INVALID, f"bad request: {exc}".encode())
            return None
        export = exports.get(name)
        if export is None:
            _reply(sock, option, Rep.ERR_UNKNOWN, f"no export named {name!r}".encode())
            return None
        _reply(sock, option, Rep.INFO, EXPORT_INFO.pack(Info.EXPORT, export.size, export.flags))
        if Info.BLOCK_SIZE in wanted:
            _reply(sock, option, Rep.INFO, BLOCK_SIZE_INFO.pack(
                Info.BLOCK_SIZE, export.block_size, export.block_size, export.max_request))
        _reply(sock, option, Rep.ACK)
        return export if option == Opt.GO else None
    _reply(sock, option, Rep.ERR_UNSUP, f"option {option} is not supported".encode())
    return None
