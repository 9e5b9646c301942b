"""The Ansible playbooks: ansible-lint (production profile) is clean, and every playbook
passes ``ansible-playbook --syntax-check`` against the example inventory.

Every ``*.yml`` at the top of ansible/ except the inventory is a playbook, so a new playbook
is checked without editing this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
BIN = Path(sys.executable).parent
INVENTORY = "inventory.example.yml"
PLAYBOOKS = sorted(path.name for path in ANSIBLE_DIR.glob("*.yml") if path.name != INVENTORY)


def ansible_environment(tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def test_the_playbooks_are_there() -> None:
    assert PLAYBOOKS == ["guest.yml", "host.yml", "suite.yml"]


def test_ansible_lint_is_clean(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--profile", "production"],
                            cwd=ANSIBLE_DIR, env=ansible_environment(tmp_path),
                            capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "0 failure(s), 0 warning(s)" in output, output[-3000:]


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(playbook: str, tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", INVENTORY,
                             playbook], cwd=ANSIBLE_DIR, env=ansible_environment(tmp_path),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"playbook: {playbook}" in result.stdout
