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

STANDBY_DELAY_S = 2.0  # after a takeover, before the next standby allocates its memory
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
    agents[_fork_agent(args, standby=False)] = "serving"
    agents[_fork_agent(args, standby=True)] = "standby"
    failures: list[float] = []
    code = 0
    while agents:
        pid, status = os.wait()  # retried by Python after a signal handler runs
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
        time.sleep(STANDBY_DELAY_S)
        if not stopping:
            agents[_fork_agent(args, standby=True)] = "standby"
    return code if code > 0 else 0
