"""The description of one built guest image, as stored in its cache entry.

A cache entry is a directory holding a kernel, an initramfs, a qcow2 base image, an SSH key
pair and ``manifest.json``. The manifest stores file names relative to the entry, so an entry
built in a temporary directory stays valid after it is renamed into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmemh.files import write_atomic

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

_PATH_FIELDS = ("kernel", "initramfs", "rootfs", "ssh_private_key", "ssh_public_key")


class ManifestError(ValueError):
    """A manifest.json is missing, unreadable or incomplete."""


def default_cache_dir() -> Path:
    """Where images are cached: $TMEMH_CACHE, else /var/cache/tmemh (root) or ~/.cache/tmemh."""
    override = os.environ.get("TMEMH_CACHE")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/var/cache/tmemh")
    return Path.home() / ".cache" / "tmemh"


@dataclass(frozen=True)
class ImageManifest:
    directory: Path  # the cache entry directory
    key: str  # hash of all inputs
    kernel: Path  # vmlinuz
    initramfs: Path  # initrd (cpio.gz)
    rootfs: Path  # qcow2 BASE image (never written to; each VM gets its own overlay)
    kernel_version: str  # e.g. "6.1.0-41-amd64"
    cmdline: str  # base kernel command line; the VM side appends its own words
    ssh_user: str  # "root"
    ssh_private_key: Path
    ssh_public_key: Path

    @classmethod
    def load(cls, directory: Path) -> ImageManifest:
        """Read ``directory/manifest.json``; paths in it are relative to ``directory``."""
        directory = Path(directory).resolve()
        path = directory / MANIFEST_NAME
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ManifestError(f"no image manifest at {path}") from exc
        except (OSError, ValueError) as exc:
            raise ManifestError(f"cannot read image manifest {path}: {exc}") from exc
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{path}: unsupported manifest format {data.get('format')!r}")
        try:
            return cls(
                directory=directory,
                key=str(data["key"]),
                kernel_version=str(data["kernel_version"]),
                cmdline=str(data["cmdline"]),
                ssh_user=str(data["ssh_user"]),
                **{name: directory / str(data[name]) for name in _PATH_FIELDS},
            )
        except KeyError as exc:
            raise ManifestError(f"{path}: missing field {exc.args[0]!r}") from exc

    def to_json(self) -> dict[str, Any]:
        """The manifest as stored: file names relative to the entry directory."""
        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "key": self.key,
            "kernel_version": self.kernel_version,
            "cmdline": self.cmdline,
            "ssh_user": self.ssh_user,
        }
        for name in _PATH_FIELDS:
            data[name] = str(Path(getattr(self, name)).relative_to(self.directory))
        return data

    def save(self) -> None:
        """Write ``manifest.json`` atomically (temp file, then rename)."""
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        write_atomic(self.directory / MANIFEST_NAME, text.encode())

    def missing_files(self) -> list[Path]:
        """The files this manifest names that do not exist."""
        return [p for p in (getattr(self, n) for n in _PATH_FIELDS) if not Path(p).is_file()]
