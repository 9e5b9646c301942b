"""The state directory: one JSON record per running VM, so later commands can find it.

Layout: ``<state_dir>/<name>/vm.json`` beside the VM's run files (overlay, console log,
QMP socket). ``$TMEMH_STATE`` overrides the default location.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tmemh.files import write_atomic

from .errors import VMError

logger = logging.getLogger(__name__)

RECORD_NAME = "vm.json"
RECORD_FORMAT = 1
STATE_ENV = "TMEMH_STATE"


class StateError(VMError):
    """A state record is unreadable or malformed."""


def default_state_dir() -> Path:
    """$TMEMH_STATE, else /run/tmemh (root) or $XDG_RUNTIME_DIR/tmemh or ~/.local/state/tmemh."""
    override = os.environ.get(STATE_ENV)
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/run/tmemh")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "tmemh"
    return Path.home() / ".local" / "state" / "tmemh"


@dataclass
class VMRecord:
    """What a later command needs to find, reach and tear down a running VM."""

    name: str
    backend: str  # "qemu" or "libvirt"
    handle: dict[str, Any]  # backend-specific: pid + QMP socket, or URI + domain name
    run_dir: str
    console_log: str
    overlay: str
    ssh_port: int
    ssh_user: str
    ssh_key: str
    accel: str
    sockets: list[str] = field(default_factory=list)  # QMP and server-mode channel sockets
    command: list[str] = field(default_factory=list)
    # The tmemd wiring (``vm up --tmem``): control socket, the VM's own socket, the port name
    # and the socket's owner uid; None without tmem. Dismissed again at teardown.
    tmem: dict[str, Any] | None = None
    # The data disk (``vm up --data-disk``): its qcow2 (removed at teardown), guest device,
    # serial, size in bytes and base image (tmemh.vm.disks.data_disk_record); None without.
    data_disk: dict[str, Any] | None = None
    format: int = RECORD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: Path) -> VMRecord:
        try:
            data = json.loads(text)
            if data.get("format") != RECORD_FORMAT:
                raise StateError(f"{origin}: unsupported record format {data.get('format')!r}")
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise StateError(f"{origin}: malformed VM record: {exc}") from exc


class StateDir:
    """Reads and writes VM records under one directory."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_state_dir()

    def run_dir(self, name: str) -> Path:
        return self.path / name

    def record_path(self, name: str) -> Path:
        return self.run_dir(name) / RECORD_NAME

    def save(self, record: VMRecord) -> None:
        """Write the record atomically."""
        path = self.record_path(record.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, record.to_json().encode())

    def load(self, name: str) -> VMRecord | None:
        path = self.record_path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return VMRecord.from_json(text, path)

    def names(self) -> list[str]:
        """Names of every VM with a record, sorted."""
        if not self.path.is_dir():
            return []
        return sorted(p.parent.name for p in self.path.glob(f"*/{RECORD_NAME}"))

    def remove(self, name: str) -> None:
        """Drop the record (idempotent); the run directory's other files are the caller's."""
        self.record_path(name).unlink(missing_ok=True)
