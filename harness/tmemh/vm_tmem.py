"""A VM wired to tmemd (``tmemh vm up --tmem``, ``tmemh vm status``): the host's half.

Identity comes from the host (docs/trust-model.md): before the VM starts, the harness admits
it by name over tmemd's control socket, for the uid QEMU will run as, and QEMU's chardev for
the virtio-serial port ``org.tmem.0`` connects to the VM's own socket that the admission
returns (:class:`tmemh.vm.VirtualMachine` does the admitting and the dismissing). This module
finds the control socket, says in one line how to start a daemon when none answers, reports
after boot whether the guest swaps through tmem, and puts the guest agent's status beside
tmemd's view of the VM.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

from tmemd.service.config import DEFAULT_CONTROL
from tmemd.service.controlclient import ControlClient, ControlError
from tmemh.ssh import SSHError
from tmemh.vm import VirtualMachine
from tmemh.vm.errors import TmemUnavailable
from tmemh.vm.tmemadmission import TMEM_PORT

logger = logging.getLogger(__name__)

CONTROL_NAME = Path(DEFAULT_CONTROL).name  # control.sock: what a directory argument holds
AGENT_LOG = "/var/log/tmem-agent.log"
AGENT_READY_FILE = "/run/tmem-agent/ready"
AGENT_WAIT_S = 120.0  # TCG: the agent's Python start, nbd-client, mkswap and swapon
LIST_PAGE = 1000
_SECTION = "=== tmemh:"


def control_socket(argument: str | Path) -> Path:
    """The control socket ``--tmem`` names: the path itself, or ``control.sock`` inside it
    when it is a directory."""
    path = Path(argument)
    return path / CONTROL_NAME if path.is_dir() else path


def require_daemon(control: Path) -> None:
    """Raise :class:`TmemUnavailable` (one line, saying how to start one) unless a tmemd
    answers at ``control``."""
    try:
        with ControlClient(str(control), timeout=5.0) as client:
            client.call("ping")
    except ControlError as exc:
        reason = exc.__cause__.strerror if isinstance(exc.__cause__, OSError) and \
            exc.__cause__.strerror else str(exc)
        raise TmemUnavailable(
            f"no tmemd answers at {control} ({reason}); start one with "
            f"`tmemd serve --control {shlex.quote(str(control))}`, then run this again"
        ) from None


# -- the guest's side ---------------------------------------------------------------------

def _guest_probe(wait_s: float) -> str:
    """A shell script for the guest: wait (bounded) until the agent is ready, failed or gone,
    then print its status, the active swaps and the tail of its log, in sections."""
    return f"""
end=$(( $(date +%s) + {int(wait_s)} ))
while [ "$(date +%s)" -lt "$end" ]; do
    [ -e {AGENT_READY_FILE} ] && break
    grep -q TMEM-AGENT-FAILED {AGENT_LOG} 2>/dev/null && break
    pgrep -f 'tmem_agent.cli run' >/dev/null 2>&1 || break
    sleep 1
done
echo '{_SECTION} status'; tmem-agent status 2>&1
echo '{_SECTION} swaps'; cat /proc/swaps
echo '{_SECTION} log'; tail -n 20 {AGENT_LOG} 2>&1
echo '{_SECTION} ports'; tmem-agent ports 2>&1
"""


def _sections(text: str) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith(_SECTION):
            current = found.setdefault(line[len(_SECTION):].strip(), [])
        else:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in found.items()}


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def swap_report(vm: VirtualMachine, wait_s: float = AGENT_WAIT_S) -> tuple[bool, str]:
    """Whether the guest swaps through tmem, and one line saying so (with the device), or
    why not (from the agent's status or the tail of its log). Never raises for the guest."""
    try:
        result = vm.run(_guest_probe(wait_s), timeout=wait_s + 60)
    except SSHError as exc:
        return False, f"tmem swap: unknown (cannot ask the guest: {exc})"
    parts = _sections(result.stdout)
    status = _json_object(parts.get("status", ""))
    device = str((status or {}).get("device") or "/dev/nbd0")
    in_swaps = any(line.split()[0] == device for line in parts.get("swaps", "").splitlines()[1:]
                   if line.split())
    if status is not None and (status.get("swap_active") or in_swaps):
        link = "tmemd connected" if status.get("tmem_connected") else \
            "tmemd NOT connected: pages go to the fallback file"
        return True, f"tmem swap: active on {device} ({link})"
    if in_swaps:
        return True, f"tmem swap: active on {device} (the agent's status did not answer)"
    return False, f"tmem swap: not active ({_why_not(status, parts)})"


def _why_not(status: dict[str, Any] | None, parts: dict[str, str]) -> str:
    if TMEM_PORT not in parts.get("ports", ""):
        return f"the guest has no virtio-serial port {TMEM_PORT}"
    log_lines = [line.strip() for line in parts.get("log", "").splitlines() if line.strip()]
    failed = [line for line in log_lines if "TMEM-AGENT-FAILED" in line or "Error" in line]
    if status is not None:
        phase = str(status.get("phase", "?"))
        if phase.startswith("failed"):
            return f"agent {phase}"
        last = f"; log: {log_lines[-1]}" if log_lines else ""
        return f"agent still in phase {phase!r}{last}"
    if failed:
        return f"{AGENT_LOG}: {failed[-1]}"
    if log_lines:
        return f"no agent answers; {AGENT_LOG}: {log_lines[-1]}"
    return f"no agent answers and {AGENT_LOG} is empty"


# -- `vm status` ----------------------------------------------------------------------------

def agent_status(vm: VirtualMachine) -> dict[str, Any]:
    """The guest agent's status document, or ``{"error": ...}``."""
    try:
        result = vm.run("tmem-agent status", timeout=60)
    except SSHError as exc:
        return {"error": f"cannot reach the guest: {exc}"}
    found = _json_object(result.stdout)
    if result.exit_code != 0 or found is None:
        said = (result.stderr or result.stdout).strip().splitlines()
        return {"error": said[-1] if said else f"tmem-agent status exited {result.exit_code}"}
    return found


def daemon_view(vm_name: str, tmem: dict[str, Any] | None) -> dict[str, Any]:
    """tmemd's view of the VM: its admission, its session and its client's counters (each
    None when tmemd has none), or ``{"error": ...}``."""
    if tmem is None:
        return {"error": "not wired to tmemd (boot it with `tmemh vm up NAME --tmem`)"}
    view: dict[str, Any] = {"control": tmem["control"], "admission": None, "session": None,
                            "client": None}
    try:
        with ControlClient(str(tmem["control"])) as client:
            view["admission"] = _find(client, "vms", "vm", vm_name)
            view["session"] = _find(client, "sessions", "vm", vm_name)
            if view["session"] is not None:
                stats = client.call("stats", client=view["session"]["client_id"])
                view["client"] = (stats.get("clients") or [None])[0]
    except ControlError as exc:
        return {"control": tmem["control"], "error": str(exc)}
    return view


def _find(client: ControlClient, listing: str, key: str, value: str) -> dict[str, Any] | None:
    """The entry of ``list``'s ``listing`` whose ``key`` is ``value`` (paging through)."""
    offset = 0
    while True:
        page = client.call("list", offset=offset, limit=LIST_PAGE)
        for entry in page.get(listing, []):
            if entry.get(key) == value:
                return dict(entry)
        offset += LIST_PAGE
        if offset >= int(page.get(f"total_{listing}", 0)):
            return None


def status_rows(agent: dict[str, Any], daemon: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, the guest agent's figure, tmemd's figure) rows for the status table."""
    counts = agent.get("counters", {})
    client = daemon.get("client") or {}
    session = daemon.get("session") or {}
    admission = daemon.get("admission") or {}

    def show(value: Any) -> str:
        return "-" if value is None or value == "" else str(value)

    rows = [
        ("error", show(agent.get("error")), show(daemon.get("error"))),
        ("state", show(agent.get("phase")),
         "admitted" if admission.get("admitted") else show(admission and "not admitted")),
        ("swap device", f"{agent.get('device', '-')} "
                        f"({'active' if agent.get('swap_active') else 'not active'})"
         if "phase" in agent else "-", show(admission.get("socket"))),
        ("connected", show(agent.get("tmem_connected")), show(session.get("connected"))),
        ("puts (pages)", show(counts.get("puts")), show(client.get("puts"))),
        ("gets (pages)", show(counts.get("gets")), show(client.get("gets"))),
        ("flushes", show(counts.get("flushes")), show(client.get("flushes"))),
        ("pages held", show((agent.get("map") or {}).get("tmem")), show(client.get("pages"))),
        ("refused / failed puts", show(sum((agent.get("refusals") or {}).values())
                                       if "refusals" in agent else None),
         show(client.get("failed_puts"))),
        ("fallback writes", show(counts.get("fallback_writes")), "-"),
        ("compressed bytes", "-", show(client.get("zbytes"))),
    ]
    return [row for row in rows if row[0] != "error" or row[1:] != ("-", "-")]
