"""The guest half of the suite, copied into each guest over the VM's connection.

The package :mod:`tmemh.suite.guest` is staged (its ``*.py`` files only, no caches) as a
directory named ``tmemh_guest`` and uploaded to ``/opt/tmemh-suite``; commands then run
``python3 -m tmemh_guest.main`` and ``python3 -m tmemh_guest.monitor`` with that directory on
the module path.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from . import guest

logger = logging.getLogger(__name__)

GUEST_DIR = "/opt/tmemh-suite"
PACKAGE = "tmemh_guest"
WORKDIR = "/var/tmp/tmemh-work"


class Guest(Protocol):
    def run(self, command: str, timeout: float | None = ..., check: bool = ...) -> object: ...

    def upload(self, sources: Sequence[Path], dest: str) -> list[str]: ...


def source_dir() -> Path:
    return Path(guest.__file__).parent


def install(target: Guest) -> None:
    """Copy the guest package into the guest (replacing an older copy)."""
    with tempfile.TemporaryDirectory(prefix="tmemh-guest-") as staging:
        package = Path(staging) / PACKAGE
        package.mkdir()
        for path in sorted(source_dir().glob("*.py")):
            shutil.copy2(path, package / path.name)
        target.run(f"rm -rf {GUEST_DIR}/{PACKAGE} && mkdir -p {GUEST_DIR}", check=True)
        target.upload([package], GUEST_DIR)
    logger.debug("guest package installed in %s/%s", GUEST_DIR, PACKAGE)


def python_command(module: str, *args: str, lean: bool = False) -> str:
    """The shell command that runs ``python3 -m tmemh_guest.MODULE ARGS`` in the guest;
    ``lean`` skips the site module (a smaller process, for the sampling loop)."""
    words = ["env", f"PYTHONPATH={GUEST_DIR}", "python3", "-B", *(["-S"] if lean else []),
             "-m", f"{PACKAGE}.{module}", *args]
    return shlex.join(words)
