"""``tmemd serve``: the daemon. One store, the VM socket, the control socket, metrics.

Start-up, in this order so that a start that fails leaves no trace on the state file:

1. resolve the configuration; check that the host can give the memory limit;
2. open and check the state file's directory, take its lock, remove temporary files an
   interrupted save left (:mod:`.statepath`); build the store;
3. read the state file into the store (the file itself is not changed yet);
4. listen: control socket, metrics, then the VM socket;
5. only now retire the restored file to ``<state file>.restored`` (or, with
   ``--discard-state``, move the file aside unread), then print ``tmemd ready (instance ID)``
   on stdout (at any log level: supervisors and the harness wait for it).

A failure in steps 1 to 4 is one ``tmemd: error:`` line and exit 1 (2 for a bad
configuration), and the state file is neither retired nor written.

SIGTERM or SIGINT (or a control ``shutdown``) stops it gracefully: stop listening, close the
guest connections, save the persistent pools to the state file, exit 0. When that save fails
(disk full, say) no page is given up: the daemon logs the error, keeps every page, listens
again and goes on serving; the file at the state path and ``<state file>.restored`` are left
as they were. The operator fixes the cause and sends SIGTERM again. A successful save
removes ``<state file>.restored``. (docs/state-file.md)

A restored state file is renamed before the daemon serves because from then on it describes
the past: a crash later must not bring it back (a resuming guest would be handed pages it has
since overwritten). After a crash the guest is told its data is gone instead.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
from typing import Any

from ..clikit import CommandError, UsageError, describe
from ..store.errors import ConfigError, TmemError
from ..store.tmem import TmemStore
from ..units import format_size
from .config import DaemonConfig, add_config_arguments, resolve_config
from .control import start_control_server
from .metrics import start_metrics_server
from .server import ConnectionLimits, keep_freed_memory
from .sessions import SessionRegistry
from .statefile import read_state, write_state
from .statepath import StateDir, StateFileError
from .vmserver import VmServer

log = logging.getLogger(__name__)

READY_LINE = "tmemd ready"  # printed on stdout once every socket listens


class Daemon:
    """The running daemon; also what the control and metrics servers look at.

    ``state`` is the state file's checked, locked directory (None: no state file).
    """

    def __init__(self, config: DaemonConfig, limits: ConnectionLimits | None = None,
                 state: StateDir | None = None) -> None:
        self.config = config
        self.store = TmemStore(config.store_config())
        self.instance_id = os.urandom(16)
        self.registry = SessionRegistry(self.store, config.default_quota)
        self.server = VmServer(self.store, self.registry, self.instance_id, limits,
                               config.vm_socket_dir)
        self.state = state
        self._stop: asyncio.Event | None = None
        self._closers: list[Any] = []
        self._restored = False
        self._served = False  # the VM socket listened: guests may hold acknowledged pages
        self._saved = False

    # ----- ControlTarget -------------------------------------------------------------------
    def sessions_info(self) -> list[dict[str, Any]]:
        return self.registry.info()

    def forget_client(self, client_id: int) -> dict[str, Any]:
        return self.registry.forget(client_id)

    def request_shutdown(self) -> None:
        log.info("shutdown requested")
        if self._stop is not None:
            self._stop.set()

    # ----- state file ----------------------------------------------------------------------
    def restore_state(self) -> None:
        """Read the state file into the store; the file stays as it is until the daemon serves."""
        if self.state is None or self.config.discard_state:
            return
        stream = self.state.open_saved()
        if stream is None:
            log.info("no state file at %s: starting empty", self.state.path)
            return
        with stream:
            records = read_state(stream, self.state.path, self.store)
        self.registry.restore(records)
        self._restored = True
        log.info("restored %d sessions from %s", len(records), self.state.path)

    def _settle_state_file(self) -> None:
        """Once serving: retire the restored file, or move a discarded one aside."""
        if self.state is None:
            return
        if self.config.discard_state:
            aside = self.state.move_aside()
            if aside is None:
                log.info("--discard-state: no state file at %s", self.state.path)
            else:
                log.warning("--discard-state: starting empty; state file %s moved to %s",
                            self.state.path, aside)
        elif self._restored:
            retired = self.state.retire()
            log.info("restored state file renamed to %s", retired)

    def save_state(self) -> bool:
        """Save to the state file; False (logged) when that failed. True without a state file."""
        if self.state is None:
            self._saved = True
            return True
        records = self.registry.records()
        try:
            summary = self.state.save(lambda stream: write_state(stream, self.store, records))
        except StateFileError as exc:
            log.error("%s; every page is kept in memory and tmemd goes on serving: fix the"
                      " cause (free space?) and stop it again", exc)
            return False
        self._saved = True
        log.info("saved %d persistent pages (%d same-filled) of %d clients and %d sessions"
                 " to %s", summary.pages, summary.filled, summary.clients, len(records),
                 self.state.path)
        if self.state.remove_restored():
            log.info("removed the previous state file's %s.restored", self.state.name)
        return True

    # ----- life cycle ----------------------------------------------------------------------
    async def _listen(self) -> None:
        """Control socket, metrics, then the VM socket (last: once it listens, guests may
        store pages)."""
        self._closers.append(await start_control_server(self.config.control, self))
        if self.config.metrics_port:
            host, port = self.config.metrics_host, self.config.metrics_port
            try:
                metrics = start_metrics_server(host, port, self,
                                               self.config.metrics_allow_remote,
                                               self.config.metrics_max_clients)
            except OSError as exc:
                raise CommandError(f"metrics port {port} on {host}: {describe(exc)}"
                                   " (choose another --metrics-port, or 0 for none)") from exc
            self._closers.append(metrics)
        await self.server.start(self.config.socket)
        self._served = True

    async def _stop_listening(self) -> None:
        await self.server.close()
        closers, self._closers = self._closers, []
        for closer in closers:
            closer.close()
            if hasattr(closer, "wait_closed"):
                await closer.wait_closed()

    async def run(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_shutdown)
        self.restore_state()
        try:
            await self._listen()
            self._settle_state_file()
            # on stdout whatever the log level: what supervisors and the harness wait for
            print(f"{READY_LINE} (instance {self.instance_id.hex()})", flush=True)
            while True:
                await self._stop.wait()
                await self._stop_listening()
                if self.save_state():
                    break
                self._stop.clear()
                await self._listen()
                log.warning("serving again after the failed save")
        finally:
            await self._stop_listening()
            if self._served and not self._saved:  # an error ended the service: keep the pages
                self.save_state()
            self.store.close()
            log.info("tmemd stopped")


# ----- host memory ---------------------------------------------------------------------------
def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty when unreadable)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    values[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def _gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB"


def _host_memory(info: dict[str, int]) -> str:
    return (f"MemAvailable {_gib(info.get('MemAvailable', 0))} of MemTotal"
            f" {_gib(info.get('MemTotal', 0))}")


def check_host_memory(config: DaemonConfig) -> None:
    """Refuse a memory limit the host cannot give: the arena is allocated and touched at start.

    More than the host's memory is a bad configuration (UsageError, exit 2); more than it has
    available now a runtime failure (CommandError, exit 1).
    """
    limit, info = config.memory_limit, _meminfo()
    shown = f"memory_limit {format_size(limit)} ({config.source_of('memory_limit')})"
    if info.get("MemTotal", limit) < limit:
        raise UsageError(f"{shown} is larger than this host's memory ({_host_memory(info)})")
    if info.get("MemAvailable", limit) < limit:
        raise CommandError(f"{shown} is more than this host has available now"
                           f" ({_host_memory(info)})")


def _new_daemon(config: DaemonConfig, state: StateDir | None) -> Daemon:
    """The daemon; a memory limit the arena's mmap cannot get is one clear error."""
    try:
        return Daemon(config, config.connection_limits(), state)
    except (MemoryError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
            raise
        raise CommandError(
            f"cannot allocate memory_limit {format_size(config.memory_limit)}:"
            f" {describe(exc) or 'out of memory'} ({_host_memory(_meminfo())})"
        ) from exc


def run_serve(args: argparse.Namespace) -> int:
    """Exit 0 after a graceful stop. A bad configuration is a usage error (exit 2); a failure
    to start or to run (socket path taken, state file unsafe or unreadable, port in use, not
    enough memory) a runtime failure (exit 1)."""
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    logging.getLogger().setLevel(config.log_level)
    log.info("%s", config.describe())
    check_host_memory(config)
    keep_freed_memory()
    state: StateDir | None = None
    try:
        if config.state_file is not None:
            state = StateDir(config.state_file, lock=True)
        asyncio.run(_new_daemon(config, state).run())
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    except (TmemError, OSError) as exc:  # state file, socket paths
        raise CommandError(describe(exc)) from exc
    finally:
        if state is not None:
            state.close()
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the tmem daemon")
    add_config_arguments(parser)
    parser.set_defaults(func=run_serve)
