"""Traces of a cell's tmem traffic (``[suite] trace = "ops" | "pages"``, docs/trace.md).

For a cell whose configuration runs the guest agent, the VM's kernel command line gets
``tmem.trace=PATH`` (and ``tmem.trace_pages=1``), so the agent the image's init starts
records every page operation it sends to tmemd. After the workload the harness waits until
the agent has written what it recorded, then copies the trace into the cell's directory, where
``tmemd replay`` can be pointed at it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from tmem_agent.trace.options import CMDLINE_PAGES, CMDLINE_TRACE
from tmemh.ssh import SSHError
from tmemh.vm import VMSpec

from .collect import guest_file
from .errors import SuiteError
from .guestshell import GuestShell

logger = logging.getLogger(__name__)

MODES = ("off", "ops", "pages")
GUEST_TRACE = "/var/lib/tmem-agent/trace.tmtrace"  # on the root disk, beside the fallback
TRACE_FILE = "trace.tmtrace"
FLUSH_WAIT_S = 30.0


def check_mode(value: object) -> str:
    if value not in MODES:
        raise SuiteError(f"[suite] trace must be one of {', '.join(MODES)}, not {value!r}")
    return str(value)


def _trace_status(agent_status: str) -> dict[str, object]:
    """The ``trace`` part of the agent's status ({} when there is none)."""
    try:
        found = json.loads(agent_status).get("trace") if agent_status else None
    except (ValueError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def vm_spec(spec: VMSpec, mode: str) -> VMSpec:
    """``spec`` with the kernel words that make the agent record a trace (unchanged for
    "off")."""
    if mode == "off":
        return spec
    words = (f"{CMDLINE_TRACE}={GUEST_TRACE}",) + (
        (f"{CMDLINE_PAGES}=1",) if mode == "pages" else ())
    return replace(spec, kernel_args=(*spec.kernel_args, *words))


def fetch(guest: GuestShell, cell_dir: Path, agent_status: str = "") -> str | None:
    """Wait (bounded) until the agent has written its trace, copy it to the cell's
    directory; the file's name there, or None (logged) when there is none.
    ``agent_status``: the agent's status the caller already has (the agent is asked again
    only while the trace is still being written)."""
    text = agent_status
    deadline = time.monotonic() + FLUSH_WAIT_S
    while True:
        if not text:
            result = guest.run("tmem-agent status", check=False)
            text = result.stdout if result.ok else ""
        status = _trace_status(text)
        if not status or status.get("pending_bytes") == 0 or status.get("state") == "failed" \
                or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
        text = ""
    if status:
        (cell_dir / "trace-status.json").write_text(json.dumps(status, indent=1) + "\n")
    try:
        if guest_file(guest, GUEST_TRACE, cell_dir / TRACE_FILE):
            return TRACE_FILE
    except SSHError as exc:
        logger.warning("trace not fetched: %s", exc)
        return None
    logger.warning("the agent wrote no trace at %s", GUEST_TRACE)
    return None
