"""Running one of the project's Ansible playbooks (ansible/) from the test's virtual
environment, and reading its PLAY RECAP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
BIN = Path(sys.executable).parent  # ansible-playbook, and the Python the plays use
RECAP_LINE = re.compile(r"^(\S+)\s*:\s*(ok=.*)$", re.MULTILINE)

Recap = dict[str, dict[str, int]]


def run_playbook(playbook: str, inventory: Path, work: Path, *options: str,
                 timeout: float) -> tuple[Recap, str]:
    """ansible-playbook ``-i inventory OPTIONS playbook``, its temporary files and home in
    ``work``; it must succeed: (the per-host counts of its recap, the whole output)."""
    environment = os.environ | {
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    started = time.monotonic()
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), *options,
                             playbook], cwd=ANSIBLE_DIR, env=environment, capture_output=True,
                            text=True, timeout=timeout, check=False)
    print(f"{playbook}: {time.monotonic() - started:.0f} s")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return recap(result.stdout), output


def recap(output: str) -> Recap:
    """The PLAY RECAP lines: host -> {"ok": N, "changed": N, "failures": N, ...}."""
    counts = {}
    for host, fields in RECAP_LINE.findall(output.split("PLAY RECAP", 1)[-1]):
        numbers = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", fields)}
        numbers["failures"] = numbers.get("failed", 0)
        counts[host] = numbers
    assert counts, f"no PLAY RECAP in:\n{output[-3000:]}"
    return counts
