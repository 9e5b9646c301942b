"""The kernel's NBD netlink interface (generic netlink family "nbd"), from the standard library.

``nbd-client`` 3.24 attaches a device through this interface but cannot set a dead-connection
timeout nor hand the kernel a new socket later. The agent does both itself:
:func:`reconfigure` with ``dead_conn_timeout`` makes the kernel hold I/O while no server is
connected (an agent restart) instead of failing it, and with ``sock_fd`` gives a configured
device a new connection (the restarted agent's). :func:`connect` attaches a device without
``nbd-client`` at all. Needs CAP_SYS_ADMIN and the nbd module.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct

log = logging.getLogger(__name__)

NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

NBD_FAMILY = "nbd"
NBD_GENL_VERSION = 1
NBD_CMD_CONNECT = 1
NBD_CMD_DISCONNECT = 2
NBD_CMD_RECONFIGURE = 3
NBD_ATTR_INDEX = 1
NBD_ATTR_SIZE_BYTES = 2
NBD_ATTR_BLOCK_SIZE_BYTES = 3
NBD_ATTR_TIMEOUT = 4
NBD_ATTR_SERVER_FLAGS = 5
NBD_ATTR_CLIENT_FLAGS = 6
NBD_ATTR_SOCKETS = 7
NBD_ATTR_DEAD_CONN_TIMEOUT = 8
NBD_SOCK_ITEM = 1
NBD_SOCK_FD = 1

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
GENLMSGHDR = struct.Struct("=BBH")  # command, version, reserved
NLATTR = struct.Struct("=HH")  # length, type
NLMSGERR = struct.Struct("=i")


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = NLATTR.size + len(payload)
    return NLATTR.pack(size, kind) + payload + bytes(-size % 4)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def u64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=Q", value))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + NLATTR.size <= len(data):
        size, kind = NLATTR.unpack_from(data, off)
        if size < NLATTR.size:
            break
        out[kind & 0x3FFF] = data[off + NLATTR.size : off + size]
        off += (size + 3) & ~3
    return out


class GenericNetlink:
    """A generic netlink socket that sends one request at a time and waits for its ack."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self.sock.settimeout(10.0)
        self._seq = 0

    def __enter__(self) -> GenericNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, family: int, cmd: int, version: int, attrs: bytes) -> list[bytes]:
        """Send a request; return the payloads of the replies before the ack. A negative
        ack raises OSError with its errno."""
        self._seq += 1
        body = GENLMSGHDR.pack(cmd, version, 0) + attrs
        header = NLMSGHDR.pack(NLMSGHDR.size + len(body), family, NLM_F_REQUEST | NLM_F_ACK,
                               self._seq, 0)
        self.sock.send(header + body)
        replies: list[bytes] = []
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + NLMSGHDR.size <= len(data):
                size, kind, _, seq, _ = NLMSGHDR.unpack_from(data, off)
                if size < NLMSGHDR.size:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                payload = data[off + NLMSGHDR.size : off + size]
                off += (size + 3) & ~3
                if seq != self._seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = NLMSGERR.unpack_from(payload)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append(payload[GENLMSGHDR.size :])

    def family_id(self, name: str) -> int:
        replies = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1,
                               attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"))
        for reply in replies:
            found = parse_attrs(reply).get(CTRL_ATTR_FAMILY_ID)
            if found is not None:
                return int(struct.unpack_from("=H", found)[0])
        raise OSError(errno.ENOENT, f"no generic netlink family {name!r}")


def _sockets(fds: list[int]) -> bytes:
    return attr(NBD_ATTR_SOCKETS, b"".join(attr(NBD_SOCK_ITEM, u32(NBD_SOCK_FD, fd))
                                           for fd in fds))


def reconfigure(index: int, *, sock_fd: int | None = None, timeout: int | None = None,
                dead_conn_timeout: int | None = None) -> None:
    """Change a configured device: timeouts (seconds), and/or a new connection in place of a
    dead one. The kernel ignores the socket when no connection of the device is dead."""
    attrs = u32(NBD_ATTR_INDEX, index)
    if timeout is not None:
        attrs += u64(NBD_ATTR_TIMEOUT, timeout)
    if dead_conn_timeout is not None:
        attrs += u64(NBD_ATTR_DEAD_CONN_TIMEOUT, dead_conn_timeout)
    if sock_fd is not None:
        attrs += _sockets([sock_fd])
    with GenericNetlink() as nl:
        nl.request(nl.family_id(NBD_FAMILY), NBD_CMD_RECONFIGURE, NBD_GENL_VERSION, attrs)


def connect(index: int, size: int, block_size: int, server_flags: int, sock_fd: int, *,
            timeout: int = 0, dead_conn_timeout: int = 0) -> int:
    """Attach device ``index`` to a socket already in the transmission phase; returns the
    index the kernel used."""
    attrs = (u32(NBD_ATTR_INDEX, index) + u64(NBD_ATTR_SIZE_BYTES, size)
             + u64(NBD_ATTR_BLOCK_SIZE_BYTES, block_size)
             + u64(NBD_ATTR_SERVER_FLAGS, server_flags))
    if timeout:
        attrs += u64(NBD_ATTR_TIMEOUT, timeout)
    if dead_conn_timeout:
        attrs += u64(NBD_ATTR_DEAD_CONN_TIMEOUT, dead_conn_timeout)
    attrs += _sockets([sock_fd])
    with GenericNetlink() as nl:
        replies = nl.request(nl.family_id(NBD_FAMILY), NBD_CMD_CONNECT, NBD_GENL_VERSION,
                             attrs)
    for reply in replies:
        found = parse_attrs(reply).get(NBD_ATTR_INDEX)
        if found is not None:
            return int(struct.unpack_from("=I", found)[0])
    return index


def disconnect(index: int) -> None:
    with GenericNetlink() as nl:
        nl.request(nl.family_id(NBD_FAMILY), NBD_CMD_DISCONNECT, NBD_GENL_VERSION,
                   u32(NBD_ATTR_INDEX, index))


def device_index(device: str) -> int:
    """3 for /dev/nbd3."""
    name = os.path.basename(device)
    if not name.startswith("nbd") or not name[3:].isdigit():
        raise ValueError(f"{device} is not an nbd device")
    return int(name[3:])


def device_configured(device: str) -> bool:
    """Whether the kernel has a configuration (a server connection, live or dead) for it."""
    return os.path.exists(f"/sys/block/{os.path.basename(device)}/pid")


def swap_active(device: str) -> bool:
    try:
        with open("/proc/swaps") as swaps:
            return any(line.split()[0] == device for line in swaps.readlines()[1:] if line)
    except OSError:
        return False
