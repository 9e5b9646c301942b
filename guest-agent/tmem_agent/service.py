"""``tmem-agent run``: the long-running agent. It finds the tmem port, says hello with the
guest's boot id, and serves a swap device whose pages live in host tmem (the swap shim of
:mod:`tmem_agent.swap`), with a fallback file on the guest's disk.

Attaching (first start in a boot, :mod:`tmem_agent.swap.swapon`): the NBD server listens on
``RUN_DIR/nbd.sock``; the agent runs ``nbd-client -u RUN_DIR/nbd.sock -N swap /dev/nbd0 -swap
-b 4096`` (netlink mode), then sets the device's dead-connection timeout over netlink
(nbd-client 3.24 cannot), caps its request size, and runs ``mkswap`` and ``swapon --discard -p
PRIORITY``. Those commands do I/O on the device, so they run while the event loop serves it.
Then the agent prints ``TMEM-AGENT-READY ...`` and writes ``RUN_DIR/ready``.

Restarting (same boot, device still attached): the kernel holds the device's I/O while no
server is connected (up to the dead-connection timeout). The new agent gives it a fresh
connection (one end of a socketpair) with NBD_CMD_RECONFIGURE, and every page is where the
location map says: in tmem (the same pool, tmemd resumes the client for the same boot id) or
in the fallback file. The same reconnection happens if the kernel ever drops a connection.
The restarted agent must come up while the guest may be out of memory with its swap stalled;
``--supervise`` (:mod:`tmem_agent.supervisor`) keeps a standby ready for that. What a
restarted agent must read comes from the disk (``FALLBACK.state``, ``FALLBACK.lock``, the map
``FALLBACK.map``), never from tmpfs, whose pages may sit on the stalled device.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
from typing import Any

from .cache import embedded
from .channel.ports import find_port
from .channel.transport import Transport
from .serving import announce_failure, announce_ready, serve
from .status import RUN_DIR
from .swap import hardening, netlink
from .swap.fallback import FallbackFile, FallbackWorker
from .swap.locmap import LocationMap
from .swap.loop import SwapServer
from .swap.nbdconn import NbdConnection, PagePool
from .swap.nbdproto import Export
from .swap.shim import SwapShim
from .swap.stats import SwapStats
from .swap.swapon import SwapAttacher, page_cluster
from .swap.tmemlink import REPLY_TIMEOUT_S, TmemLink
from .trace import options as trace_options

log = logging.getLogger(__name__)

READY_MARKER = "TMEM-AGENT-READY"
FALLBACK = "/var/lib/tmem-agent/swap-fallback"
PAGE_SIZE = 4096
# Swap-in reads of up to 32 pages: a 384 MiB verify through a 256 MiB TCG guest took 44 s
# instead of 101 s with the kernel's 8 (docs/facts.md).
DEFAULT_PAGE_CLUSTER = 5
MAX_PAGE_CLUSTER = 8  # 256 pages: the largest request the agent accepts by default
UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
WARM_HEAP_MIB = 4  # a standby's heap, grown before it waits: the frames it allocates later


def parse_size(text: str) -> int:
    """Bytes in "1G", "512M", "65536" (powers of 1024; a trailing "iB" or "B" is allowed)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        size = int(float(number) * UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 512M)") from None
    if size <= 0 or size % PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"size must be a positive multiple of 4 KiB: {text}")
    return size


def kernel_word(key: str, cmdline: str = "/proc/cmdline") -> str | None:
    """The value of ``KEY=VALUE`` on the kernel command line (None: absent or empty)."""
    try:
        with open(cmdline) as f:
            for word in f.read().split():
                if word.startswith(key + "=") and len(word) > len(key) + 1:
                    return word[len(key) + 1:]
    except OSError:
        pass
    return None


def default_vm_name(cmdline: str = "/proc/cmdline") -> str:
    """The VM name for the hello: ``tmem.vm=NAME`` on the kernel command line (the host
    admitted the VM under that name and puts it there), else the host name."""
    return kernel_word("tmem.vm", cmdline) or os.uname().nodename


def read_boot_id() -> bytes:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return bytes.fromhex(f.read().strip().replace("-", ""))


def open_transport(port_name: str, tmem_socket: str | None) -> Transport:
    """A transport to tmemd: over ``tmem_socket`` if given, else the named virtio port."""
    if tmem_socket:
        return Transport.unix(tmem_socket)
    device = find_port(port_name)
    if device is None:
        raise OSError(f"no virtio-serial port named {port_name!r}")
    return Transport.device(device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tmem-agent run``."""
    parser.add_argument("--port-name", default="org.tmem.0", help="virtio-serial port to tmemd")
    parser.add_argument("--tmem-socket", metavar="PATH",
                        help="reach tmemd over this unix socket instead of the port (tests)")
    parser.add_argument("--swap-size", type=parse_size, default="1G",
                        metavar="SIZE", help="size of the swap device")
    parser.add_argument("--fallback", default=FALLBACK, metavar="PATH",
                        help="fallback file (the location map is PATH.map)")
    parser.add_argument("--device", default="/dev/nbd0", help="nbd device to attach")
    parser.add_argument("--run-dir", default=RUN_DIR, metavar="DIR",
                        help="sockets, state and the ready file")
    parser.add_argument("--export", default="swap", help="NBD export name")
    parser.add_argument("--attach", choices=("nbd-client", "netlink", "none"),
                        default="nbd-client",
                        help="how the device is attached; none: serve RUN_DIR/nbd.sock only")
    parser.add_argument("--priority", type=int, default=100, help="swap priority (swapon -p)")
    parser.add_argument("--page-cluster", type=int, default=DEFAULT_PAGE_CLUSTER,
                        choices=range(-1, MAX_PAGE_CLUSTER + 1), metavar="N",
                        help="swap readahead set when swap is turned on: vm.page-cluster N "
                             "(reads of at most 2^N pages; every swap-in read is a round trip "
                             "to tmemd, so fewer, larger reads are faster); -1 keeps the "
                             f"kernel's value (default {DEFAULT_PAGE_CLUSTER})")
    parser.add_argument("--vm", default=None,
                        help="VM name in the hello; default: tmem.vm= on the kernel command "
                             "line, else the host name (the host decides identity anyway)")
    parser.add_argument("--slots", type=int, default=1536,
                        help="page buffers allocated at start (bounds the pages in flight)")
    parser.add_argument("--batch", type=int, default=256, help="pages per tmem batch frame")
    parser.add_argument("--io-timeout", type=int, default=30,
                        help="seconds before the kernel resends a request on a new connection")
    parser.add_argument("--dead-conn-timeout", type=int, default=300,
                        help="seconds the kernel holds I/O while no agent is connected")
    parser.add_argument("--reply-timeout", type=float, default=REPLY_TIMEOUT_S, metavar="S",
                        help="seconds without an answer to the oldest request to tmemd after "
                             "which the stream counts as broken and is opened again "
                             f"(default {REPLY_TIMEOUT_S:.0f})")
    parser.add_argument("--supervise", action="store_true",
                        help="keep an agent running: restart it (forked from this hardened, "
                             "memory-resident process) whenever it dies")
    parser.add_argument("--no-harden", action="store_true",
                        help="skip SCHED_FIFO, mlockall and the other protections (tests)")
    embedded.add_arguments(parser, kernel_word(embedded.CMDLINE_WORD))
    trace_options.add_arguments(parser, kernel_word)


class AgentRunning(OSError):
    """Another agent holds the run directory."""


class Agent:
    """One run of the service: its parts, the attach steps, the ready marker."""

    def __init__(self, args: argparse.Namespace, standby: bool = False) -> None:
        """``standby``: build, lock and harden everything first, then wait for the run
        directory's lock (the serving agent's): taking over then needs next to no new
        memory, which matters as the guest may be short of it while no agent serves. Only
        what the serving agent still holds comes after the lock: the location map (the
        first agent of a boot may be resetting it), the sockets and the trace file."""
        self.args = args
        self.boot_id = read_boot_id()
        pages = args.swap_size // PAGE_SIZE
        os.makedirs(args.run_dir, mode=0o700, exist_ok=True)
        state_dir = os.path.dirname(os.path.abspath(args.fallback))
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        # Beside the fallback, on disk, not in the run directory: /run is tmpfs, whose pages
        # can be swapped out to the very device a taking-over agent must reattach first.
        self.state_path = args.fallback + ".state"
        self.ready_path = os.path.join(args.run_dir, "ready")
        nbd_path = os.path.join(args.run_dir, "nbd.sock")
        self.stats = SwapStats()
        self.fallback = FallbackFile(args.fallback, pages)
        self.fallback_io = FallbackWorker(self.fallback)
        self.pool = PagePool(args.slots)
        self.link = TmemLink(self._open_transport, args.vm or default_vm_name(), self.boot_id,
                             None, self.stats, reply_timeout=args.reply_timeout)
        self.shim = SwapShim(self.link, self.fallback_io, self.pool, self.stats,
                             batch_max=args.batch)
        self.export = Export(args.export, args.swap_size, max_request=args.batch * PAGE_SIZE)
        self.cache = None if not args.cache_disk else embedded.EmbeddedCache(
            args, self.link, state_dir)
        self.hardening: dict[str, str] = {}
        self._hardened = False
        if standby:
            self._harden()
            warm = [bytearray(1 << 20) for _ in range(WARM_HEAP_MIB)]  # noqa: F841
            del warm  # the heap keeps (and mlockall keeps resident) what takeover allocates
        self._lock = self._take_lock(args.fallback + ".lock", wait=standby)
        self.locmap = LocationMap(args.fallback + ".map", pages, self.boot_id)
        self.shim.use_map(self.locmap)
        # The trace file too: a new recorder moves the serving agent's trace aside.
        self.link.trace = trace_options.make_recorder(args, self.fallback_io, self.link.vm,
                                                      self.boot_id)
        self.server = SwapServer(self.shim, self.export, self.pool, nbd_path=nbd_path,
                                 status_path=os.path.join(args.run_dir, "status.sock"),
                                 status_extra=self.status)
        self.attacher = SwapAttacher(
            self.server, self.export, args.device, nbd_path, self.state_path, self.boot_id,
            priority=args.priority, page_cluster_order=args.page_cluster, mode=args.attach,
            io_timeout=args.io_timeout, dead_conn_timeout=args.dead_conn_timeout)
        self.attacher.on_ready, self.attacher.on_fail = self._swap_ready, self._fail
        self.attacher.on_phase = self._set_phase
        self.server.on_connection_closed = self._connection_closed
        if self.cache is not None:
            self.cache.serve_on(self.server, nbd_path, self.boot_id)
        self.phase = "starting"
        self.ready = False
        self.failed = False

    @staticmethod
    def _take_lock(path: str, wait: bool = False) -> int:
        """One agent per fallback file (and so per map and run directory): a second one
        would take over the sockets and the map while the first still serves the device.
        The lock file holds the holder's pid. ``wait``: a standby waits for it (the
        holder's death releases it)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if wait:
                log.info("standby: waiting to take over from the serving agent")
                fcntl.flock(fd, fcntl.LOCK_EX)
                log.info("standby: taking over")
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AgentRunning(f"another tmem-agent run (pid {holder}) uses {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _open_transport(self) -> Transport:
        return open_transport(self.args.port_name, self.args.tmem_socket)

    def status(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "ready": self.ready, "device": self.args.device,
            "swap_size": self.args.swap_size,
            "swap_active": netlink.swap_active(self.args.device),
            "page_cluster": page_cluster(),
            "tmem_connected": self.link.connected, "pool_id": self.link.pool_id,
            "hello": None if self.link.hello is None else {
                "status": self.link.hello.status.name.lower(),
                "client_id": self.link.hello.client_id,
                "daemon_version": self.link.hello.daemon_version},
            "map": self.locmap.census(), "fallback_allocated_bytes":
                self.fallback.allocated_bytes(),
            "daemon_view": self.link.daemon_view, "hardening": self.hardening,
            "fallback_thread_hardening": self.fallback_io.thread_setup,
            "locked_kib": hardening.locked_kib(),
            "cpu_s": round(sum(os.times()[:2]), 2),
            "cpu_user_s": round(os.times()[0], 2), "cpu_system_s": round(os.times()[1], 2),
        } | ({} if self.cache is None else {"cache": self.cache.status()}) | (
            {} if self.link.trace is None else {"trace": self.link.trace.status()})

    # ----- start-up ------------------------------------------------------------------------
    def _harden(self) -> None:
        """Harden the process and start its threads (hardened too)."""
        harden = not self.args.no_harden
        if harden:
            self.hardening = hardening.harden()
        self.fallback_io.start(hardening.harden_thread if harden else None)
        if self.cache is not None:
            self.cache.start_threads(harden)
        self._hardened = True

    def start(self) -> None:
        if not self._hardened:
            self._harden()
        if not self.link.connect():
            log.warning("starting without tmemd: pages go to the fallback file until it "
                        "answers")
        self.attacher.start()

    def _set_phase(self, phase: str) -> None:
        self.phase = phase

    def _connection_closed(self, conn: NbdConnection) -> None:
        if self.cache is not None:
            self.cache.attacher.connection_closed(conn)
        self.attacher.connection_closed(conn)

    # ----- ready ---------------------------------------------------------------------------
    def _swap_ready(self) -> None:
        """Swap is on: attach the cache's device now (once), then be ready."""
        if self.cache is None or self.cache.started:
            self._set_ready()
        else:
            self.phase = "cache"
            self.cache.attach(self._set_ready)

    def _set_ready(self) -> None:
        self.phase = "ready"
        self.ready = True
        info: dict[str, Any] = {
            "device": self.args.device, "size": self.args.swap_size,
            "tmem": "connected" if self.link.connected else "fallback-only",
            "attach": self.args.attach, "page_cluster": page_cluster()}
        if self.cache is not None:
            info.update(self.cache.ready_info())
        announce_ready(self.ready_path, READY_MARKER, info)

    def _fail(self, message: str) -> None:
        self.phase = f"failed: {message}"
        announce_failure("TMEM-AGENT-FAILED", message)
        self.server.stop()
        self.failed = True

    def close(self) -> None:
        try:
            if self.link.trace is not None:
                self.link.trace.close()
            self.fallback_io.drain()
            self.locmap.sync()
            if self.cache is not None:
                self.cache.close()
        finally:
            self.fallback_io.close()
            self.server.close()
            self.link.close()
            self.locmap.close()
            self.fallback.close()
            os.close(self._lock)
            for path in (self.ready_path,):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def run_agent(args: argparse.Namespace, standby: bool = False) -> int:
    """Run the agent until SIGTERM or SIGINT; 1 if attaching the swap device failed.
    ``standby``: wait, ready, until the serving agent is gone (see :class:`Agent`)."""
    return serve(Agent(args, standby))
