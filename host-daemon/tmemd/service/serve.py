"""``tmemd serve``: the daemon. One store, the VM socket, the control socket, metrics.

Start-up: resolve the configuration, build the store, restore the state file if one is named
and exists, then listen; once every socket listens, print ``tmemd ready (instance ID)`` on
stdout (at any log level: supervisors and the harness wait for it). SIGTERM or SIGINT (or a
control ``shutdown``) stops it gracefully: stop listening, close the guest connections, save
the persistent pools to the state file, exit.
The control socket, metrics endpoint and state file come from their own modules.

A restored state file is renamed to ``<state file>.restored`` before the daemon serves: it
describes the past from then on, and a crash later must not bring it back (a resuming guest
would be handed pages it has since overwritten). After a crash the guest is told its data is
gone instead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Any

from ..clikit import CommandError, UsageError, describe
from ..store.errors import ConfigError, TmemError
from ..store.tmem import TmemStore
from . import statefile
from .config import DaemonConfig, add_config_arguments, resolve_config
from .control import start_control_server
from .metrics import start_metrics_server
from .server import ConnectionLimits, keep_freed_memory
from .sessions import SessionRegistry
from .vmserver import VmServer

log = logging.getLogger(__name__)

READY_LINE = "tmemd ready"  # printed on stdout once every socket listens


class Daemon:
    """The running daemon; also what the control and metrics servers look at."""

    def __init__(self, config: DaemonConfig, limits: ConnectionLimits | None = None) -> None:
        self.config = config
        self.store = TmemStore(config.store_config())
        self.instance_id = os.urandom(16)
        self.registry = SessionRegistry(self.store, config.default_quota)
        self.server = VmServer(self.store, self.registry, self.instance_id, limits,
                               config.vm_socket_dir)
        self._stop: asyncio.Event | None = None
        self._closers: list[Any] = []

    # ----- ControlTarget -------------------------------------------------------------------
    def sessions_info(self) -> list[dict[str, Any]]:
        return self.registry.info()

    def forget_client(self, client_id: int) -> dict[str, Any]:
        return self.registry.forget(client_id)

    def request_shutdown(self) -> None:
        log.info("shutdown requested")
        if self._stop is not None:
            self._stop.set()

    # ----- life cycle ----------------------------------------------------------------------
    def restore_state(self) -> None:
        path = self.config.state_file
        if path is None:
            return
        if not os.path.exists(path):
            log.info("no state file at %s: starting empty", path)
            return
        records = statefile.load_state(path, self.store)
        self.registry.restore(records)
        statefile.retire_state(path)
        log.info("restored %d sessions from %s", len(records), path)

    def save_state(self) -> None:
        path = self.config.state_file
        if path is None:
            return
        statefile.save_state(path, self.store, self.registry.records())
        log.info("saved %d sessions to %s", len(self.registry), path)

    async def _start_side_servers(self) -> None:
        self._closers.append(await start_control_server(self.config.control, self))
        if self.config.metrics_port:
            self._closers.append(start_metrics_server(
                self.config.metrics_host, self.config.metrics_port, self,
                self.config.metrics_allow_remote, self.config.metrics_max_clients))

    async def run(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_shutdown)
        self.restore_state()
        try:
            await self.server.start(self.config.socket)
            await self._start_side_servers()
            # on stdout whatever the log level: what supervisors and the harness wait for
            print(f"{READY_LINE} (instance {self.instance_id.hex()})", flush=True)
            await self._stop.wait()
        finally:
            await self.server.close()
            for closer in self._closers:
                closer.close()
                if hasattr(closer, "wait_closed"):
                    await closer.wait_closed()
            self.save_state()
            self.store.close()
            log.info("tmemd stopped")


def run_serve(args: argparse.Namespace) -> int:
    """Exit 0 after a graceful stop. A bad configuration is a usage error (exit 2); a failure
    to start or to run (socket path taken, state file unreadable) a runtime failure (exit 1)."""
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    logging.getLogger().setLevel(config.log_level)
    log.info("%s", config.describe())
    keep_freed_memory()
    try:
        limits = ConnectionLimits(
            config.stall_timeout, config.max_connections, config.hello_timeout
        )
        daemon = Daemon(config, limits)
        asyncio.run(daemon.run())
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    except (TmemError, OSError) as exc:  # state file, socket paths, ports
        raise CommandError(describe(exc)) from exc
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the tmem daemon")
    add_config_arguments(parser)
    parser.set_defaults(func=run_serve)
