"""``tmem-agent run --supervise``: an agent that serves, a standby that takes over when it
dies, and a new standby after each takeover.

An agent that dies while the guest swaps leaves the swap device waiting for a new server (the
kernel holds its I/O up to the dead-connection timeout). Starting that server from scratch is
the hard part: Python reads its modules from disk and allocates tens of megabytes while memory
is short and every anonymous page reclaim would write out is stuck behind the dead agent; in
a 256 MiB guest that stalled until the timeout failed the I/O. So the next agent is started
beforehand: the standby allocates, locks and hardens everything, then blocks on the run
directory's lock, which the serving agent's death releases; taking over then costs a few
small allocations (sockets, the reconnect), made without I/O (PR_SET_IO_FLUSHER).
Agents are forked from the supervisor: their modules are already in memory.

A standby is insurance and must never cost the serving agent: making one copies and locks
the supervisor's memory. So the next standby is forked only once the serving agent has
announced itself ready (after a takeover: swap is served again) and the guest has
``STANDBY_MIN_AVAILABLE_MIB`` available; until then the supervisor waits, and says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

from . import service
from .swap import hardening

log = logging.getLogger(__name__)

STANDBY_MIN_AVAILABLE_MIB = 48  # MemAvailable a new standby waits for
POLL_S = 0.5  # how often a pending standby's conditions are checked
FAST_FAILURES = 10  # agent deaths within FAST_WINDOW_S after which the supervisor gives up
FAST_WINDOW_S = 60.0


def _fork_agent(args: argparse.Namespace, standby: bool) -> int:
    pid = os.fork()
    if pid:
        log.info("%s agent started (pid %d)", "standby" if standby else "serving", pid)
        return pid
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        status = service.run_agent(args, standby=standby)
    except BaseException:
        log.exception("the agent failed")
        status = 1
    os._exit(status)


def mem_available_mib(meminfo: str = "/proc/meminfo") -> float | None:
    """The kernel's MemAvailable (None if it cannot be read)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class StandbyGate:
    """When the next standby may be forked: the serving agent ready since ``since`` (its
    ready file written after it) and enough memory available. Says once what it waits for."""

    def __init__(self, ready_path: str, since: float,
                 min_available_mib: float = STANDBY_MIN_AVAILABLE_MIB) -> None:
        self.ready_path, self.since = ready_path, since
        self.min_available_mib = min_available_mib
        self._said: set[str] = set()

    def open(self) -> bool:
        try:
            ready = os.stat(self.ready_path).st_mtime >= self.since
        except OSError:
            ready = False
        if not ready:
            return self._waiting("the serving agent to be ready")
        available = mem_available_mib()
        if available is not None and available < self.min_available_mib:
            return self._waiting(f"{self.min_available_mib:.0f} MiB available",
                                 f" (now {available:.0f} MiB)")
        return True

    def _waiting(self, what: str, detail: str = "") -> bool:
        if what not in self._said:
            self._said.add(what)
            log.info("next standby: waiting for %s%s", what, detail)
        return False


def supervise(args: argparse.Namespace) -> int:
    """Keep an agent serving until SIGTERM or SIGINT (passed on to the agents). A serving
    agent that exits 0 ends supervision; one that dies is replaced by the standby."""
    if not args.no_harden:
        # Inherited by the agents' fork: their allocations before they harden themselves
        # already do no I/O. The supervisor's own memory is not locked (it waits, mostly).
        hardening.harden(lock_memory=False)
    agents: dict[int, str] = {}  # pid -> "serving" | "standby"
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in sorted(agents, key=lambda p: agents[p] != "standby"):  # standby first
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ready_path = os.path.join(args.run_dir, "ready")
    agents[_fork_agent(args, standby=False)] = "serving"
    gate: StandbyGate | None = StandbyGate(ready_path, time.time())
    failures: list[float] = []
    code = 0
    while agents:
        if gate is not None and not stopping and gate.open():
            agents[_fork_agent(args, standby=True)] = "standby"
            gate = None
        if gate is None or stopping:
            pid, status = os.wait()  # retried by Python after a signal handler runs
        else:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(POLL_S)
                continue
        role = agents.pop(pid, None)
        if role is None:
            continue  # not an agent (the agents' own children are theirs to reap)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        if role == "serving" and code == 0:
            stop(signal.SIGTERM, None)
            continue
        why = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        log.error("%s agent (pid %d) died: %s", role, pid, why)
        now = time.monotonic()
        failures = [t for t in failures if now - t < FAST_WINDOW_S] + [now]
        if len(failures) >= FAST_FAILURES:
            log.error("%d agent deaths within %.0f s: giving up", len(failures), FAST_WINDOW_S)
            stop(signal.SIGTERM, None)
            code = 1
            continue
        if role == "serving":
            standby = [p for p, r in agents.items() if r == "standby"]
            if standby:
                agents[standby[0]] = "serving"  # it holds the lock now, or will in a moment
            else:
                agents[_fork_agent(args, standby=False)] = "serving"
        gate = StandbyGate(ready_path, time.time())
    return code if code > 0 else 0
