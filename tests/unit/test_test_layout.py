"""Test files need unique basenames across tests/unit and tests/real.

pytest imports them by basename (no packages under tests/), so two files of one name stop the
whole run at collection; this names the clash before CI does.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_every_test_file_has_a_unique_basename() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
