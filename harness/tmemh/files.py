"""File helpers shared by the image cache and the VM state directory."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never a part.

    The bytes go to ``<name>.<pid>`` in the same directory (the same file system, and no clash
    with another process writing the same file), which is then renamed over ``path``. Nothing
    is fsynced: this guards against concurrent readers, not against power loss.
    """
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
