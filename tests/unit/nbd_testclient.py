"""A small NBD client for the tests: the fixed newstyle handshake and pipelined commands.

Written from the protocol, apart from the agent's server code, so the tests check one against
the other. Used by the unit tests and the real tests (as ``unit.nbd_testclient``).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

INIT = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_UNKNOWN = (1 << 31) + 1, (1 << 31) + 6
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 6
EIO, EINVAL, ENOSPC = 5, 22, 28


class NbdError(Exception):
    def __init__(self, error: int, what: str) -> None:
        super().__init__(f"{what}: NBD error {error}")
        self.error = error


@dataclass
class OptionReply:
    option: int
    kind: int
    data: bytes


@dataclass
class NbdClient:
    """One connection to an NBD server on a unix socket."""

    path: str
    sock: socket.socket = field(init=False)
    size: int = 0
    flags: int = 0
    _cookie: int = 0
    _reads: dict[int, int] = field(default_factory=dict)  # cookie -> length of a read

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(self.path)
        assert self.recv(8) == INIT
        magic, handshake_flags = struct.unpack(">QH", self.recv(10))
        assert magic == IHAVEOPT and handshake_flags & 1, "fixed newstyle expected"
        self.sock.sendall(struct.pack(">I", 1 | (handshake_flags & 2)))  # fixed, no zeroes

    # ----- handshake -----------------------------------------------------------------------
    def recv(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError("server closed the connection")
            data += chunk
        return bytes(data)

    def option(self, option: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)

    def option_reply(self) -> OptionReply:
        magic, option, kind, length = struct.unpack(">QIII", self.recv(20))
        assert magic == REP_MAGIC
        return OptionReply(option, kind, self.recv(length))

    def info_request(self, option: int, name: str, infos: tuple[int, ...] = (3,)) -> list[
            OptionReply]:
        encoded = name.encode()
        self.option(option, struct.pack(">I", len(encoded)) + encoded
                    + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i)
                                                               for i in infos))
        replies = []
        while True:
            reply = self.option_reply()
            replies.append(reply)
            if reply.kind == REP_ACK or reply.kind & (1 << 31):
                return replies

    def go(self, name: str = "swap") -> None:
        replies = self.info_request(OPT_GO, name)
        if replies[-1].kind != REP_ACK:
            raise NbdError(replies[-1].kind, f"GO {name!r}")
        for reply in replies:
            if reply.kind == REP_INFO and reply.data[:2] == b"\0\0":
                self.size, self.flags = struct.unpack(">QH", reply.data[2:12])

    def export_name(self, name: str) -> None:
        """The old way in: no error reply, the server closes on an unknown name."""
        self.option(OPT_EXPORT_NAME, name.encode())
        self.size, self.flags = struct.unpack(">QH", self.recv(10))

    # ----- transmission --------------------------------------------------------------------
    def send(self, cmd: int, offset: int = 0, length: int = 0, data: bytes = b"",
             flags: int = 0) -> int:
        self._cookie += 1
        cookie = self._cookie
        if cmd == CMD_READ:
            self._reads[cookie] = length
        self.sock.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset, length)
                          + data)
        return cookie

    def reply(self) -> tuple[int, int, bytes]:
        """(cookie, error, data of a successful read) of the next reply."""
        magic, error, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == REPLY_MAGIC, hex(magic)
        length = self._reads.pop(cookie, 0)
        return cookie, error, self.recv(length) if length and not error else b""

    def replies(self, cookies: list[int]) -> dict[int, tuple[int, bytes]]:
        """Replies to every cookie (they may come in any order)."""
        out: dict[int, tuple[int, bytes]] = {}
        while len(out) < len(cookies):
            cookie, error, data = self.reply()
            assert cookie in cookies and cookie not in out, cookie
            out[cookie] = (error, data)
        return out

    def call(self, cmd: int, offset: int = 0, length: int = 0, data: bytes = b"") -> bytes:
        cookie = self.send(cmd, offset, length, data)
        got, error, payload = self.reply()
        assert got == cookie
        if error:
            raise NbdError(error, f"command {cmd} at {offset}+{length}")
        return payload

    def read(self, offset: int, length: int) -> bytes:
        return self.call(CMD_READ, offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.call(CMD_WRITE, offset, len(data), data)

    def trim(self, offset: int, length: int) -> None:
        self.call(CMD_TRIM, offset, length)

    def flush(self) -> None:
        self.call(CMD_FLUSH)

    def disconnect(self) -> None:
        self.send(CMD_DISC)
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
