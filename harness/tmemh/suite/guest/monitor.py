"""``python3 -m tmemh_guest.monitor OUT``: the guest's sampling loop (a dumb monitor).

One long-running process per measured run, started in the background over SSH: every
``--interval`` seconds it appends raw, timestamped copies of the kernel's memory counters to
OUT and parses nothing (the host does that afterwards, :mod:`tmemh.suite.parsers`). The
format is text, one section per source and sample::

    #tmemh-guest-samples 1 interval=1.0
    @ 1712345678.123456 vmstat
    <the contents of /proc/vmstat, verbatim>
    @ 1712345678.123456 zswap
    <name value, one line per file of /sys/kernel/debug/zswap>
    ...
    @ 1712345690.000000 end cpu_s=0.412 samples=12

Sources: vmstat, meminfo, psi-memory, psi-io, psi-cpu (/proc/pressure), swaps, zswap
(debugfs, when mounted), zswap-params (/sys/module/zswap/parameters, first sample only), zram
(disksize, mm_stat, io_stat, bd_stat of zram0, when set up), agent (the tmem agent's status,
when it runs) and self (the monitor's own CPU seconds so far: what sampling costs the guest,
start-up aside). Files are opened once and read again at every sample.
SIGTERM ends the loop at the next sample time; the last record gives the total CPU time.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

FORMAT_LINE = "#tmemh-guest-samples 1"
FILES = (("vmstat", "/proc/vmstat"), ("meminfo", "/proc/meminfo"),
         ("psi-memory", "/proc/pressure/memory"), ("psi-io", "/proc/pressure/io"),
         ("psi-cpu", "/proc/pressure/cpu"), ("swaps", "/proc/swaps"))
ZSWAP = "/sys/kernel/debug/zswap"
ZSWAP_PARAMS = "/sys/module/zswap/parameters"  # sampled once, at the start
ZRAM = "/sys/block/zram0"
ZRAM_FILES = ("disksize", "mm_stat", "io_stat", "bd_stat")
AGENT_SOCKET = "/run/tmem-agent/status.sock"
REOPEN_EVERY = 10  # samples between attempts to open files that were not there


class OpenFile:
    """A kernel file kept open and read again from offset 0 at every sample (cheaper than
    opening it each time: the loop must cost the guest as little as possible). Files that
    cannot seek (debugfs) are opened again for every read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.seekable = True

    def read(self) -> bytes | None:
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDONLY)
            elif self.seekable:
                try:
                    os.lseek(self.fd, 0, os.SEEK_SET)
                except OSError:
                    self.seekable = False
            if not self.seekable:
                os.close(self.fd)
                self.fd = None
                self.fd = os.open(self.path, os.O_RDONLY)
            chunks: list[bytes] = []
            while True:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        except OSError:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            return None


class FileGroup:
    """The files of one directory as ``name value`` lines (zswap's debugfs, zram's sysfs)."""

    def __init__(self, directory: str, names: tuple[str, ...] | None = None) -> None:
        self.directory = directory
        self.names = names
        self.files: list[tuple[bytes, OpenFile]] = []

    def open(self) -> None:
        try:
            names = self.names or tuple(sorted(os.listdir(self.directory)))
        except OSError:
            return
        self.files = [(name.encode(), OpenFile(os.path.join(self.directory, name)))
                      for name in names]

    def read(self) -> bytes | None:
        lines = []
        for name, opened in self.files:
            value = opened.read()
            if value is not None:
                lines.append(name + b" " + value.strip())
        return b"\n".join(lines) + b"\n" if lines else None


def _agent() -> bytes | None:
    if not os.path.exists(AGENT_SOCKET):
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(AGENT_SOCKET)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).strip() + b"\n"


class Sampler:
    """Every source, opened once; :meth:`sample` returns one sample's sections."""

    def __init__(self) -> None:
        self.files = [(name.encode(), OpenFile(path)) for name, path in FILES]
        self.zswap = FileGroup(ZSWAP)
        self.zram = FileGroup(ZRAM, ZRAM_FILES)
        self.count = 0

    def _section(self, now: bytes, name: bytes, body: bytes | None, parts: list[bytes]) -> None:
        if body:
            parts.append(b"@ " + now + b" " + name + b"\n" + body)

    def sample(self, now: float) -> bytes:
        stamp = f"{now:.6f}".encode()
        parts: list[bytes] = []
        if self.count % REOPEN_EVERY == 0:
            if not self.zswap.files:
                self.zswap.open()
            disksize = OpenFile(os.path.join(ZRAM, "disksize")).read()
            if not self.zram.files and disksize and disksize.strip() != b"0":
                self.zram.open()
        if self.count == 0:
            params = FileGroup(ZSWAP_PARAMS)
            params.open()
            self._section(stamp, b"zswap-params", params.read(), parts)
        for name, opened in self.files:
            self._section(stamp, name, opened.read(), parts)
        self._section(stamp, b"zswap", self.zswap.read(), parts)
        self._section(stamp, b"zram", self.zram.read(), parts)
        self._section(stamp, b"agent", _agent(), parts)
        cpu = os.times()
        self._section(stamp, b"self", f"cpu_s {cpu.user + cpu.system:.3f}\n".encode(), parts)
        self.count += 1
        return b"".join(parts)


def main(argv: list[str] | None = None) -> int:
    """``monitor OUT [--interval SECONDS]`` (no argparse: the loop starts lean)."""
    args = list(sys.argv[1:] if argv is None else argv)
    interval = 1.0
    if "--interval" in args:
        at = args.index("--interval")
        interval = float(args[at + 1])
        del args[at:at + 2]
    if len(args) != 1 or interval <= 0:
        print("usage: python3 -m tmemh_guest.monitor OUT [--interval SECONDS]", file=sys.stderr)
        return 2
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sampler = Sampler()
    with open(args[0], "wb") as out:
        out.write(f"{FORMAT_LINE} interval={interval}\n".encode())
        deadline = time.monotonic()
        while not stopping:
            out.write(sampler.sample(time.time()))
            out.flush()
            deadline += interval
            pause = deadline - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # after SIGTERM the sleep finishes, then the loop ends
            else:
                deadline = time.monotonic()
        cpu = os.times()
        out.write(f"@ {time.time():.6f} end cpu_s={cpu.user + cpu.system:.3f} "
                  f"samples={sampler.count}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
