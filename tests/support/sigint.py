"""SIGINT as Python's default, for tests that send it.

A test run started in the background of a non-interactive shell (``cmd &``, as CI runners and
nohup jobs often are) has SIGINT ignored, and an ignored signal stays ignored across fork and
exec: a child the test interrupts would never see it. A handler (Python's default raises
KeyboardInterrupt) becomes the default action in a child, so children started inside the
block can be interrupted too.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def default_sigint() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
