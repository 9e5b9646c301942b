"""Small JSON state files the agent keeps (attach state, pool ids, published counters).

Written atomically (a temporary file beside the target, renamed over it), so a reader, or an
agent restarted after a crash, sees the old document or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON, atomically; OSError if that fails."""
    temporary = path + ".tmp"
    with open(temporary, "w") as out:
        json.dump(value, out)
    os.replace(temporary, path)


def read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in ``path``; {} if it is missing, unreadable or not an object."""
    try:
        with open(path) as source:
            value = json.load(source)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
