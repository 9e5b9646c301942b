"""Running the build's external commands and reporting its steps.

Every command runs with a fixed environment and its output captured; a failure becomes an
:class:`ImageBuildError` naming the step, the command, its exit code and the tail of its output.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tmemh.image.errors import ImageBuildError
from tmemh.procs import command_line

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str], None]
TAIL_LINES = 25

_COMMAND_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "LANG": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}


def output_tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_command(step: str, command: Sequence[str], *, cwd: Path | None = None,
                timeout: float = 1800) -> str:
    """Run ``command``; return its output (stdout and stderr), raise ImageBuildError on failure."""
    argv = [str(a) for a in command]
    log.debug("[%s] running %s", step, command_line(argv))
    env = dict(os.environ)
    env.update(_COMMAND_ENV)
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, check=True)
    except FileNotFoundError as exc:
        raise ImageBuildError(step, argv, None, detail=f"{argv[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        text = (exc.output or b"").decode(errors="replace")
        raise ImageBuildError(step, argv, None, output_tail(text),
                              detail=f"timed out after {timeout:.0f} s") from exc
    except subprocess.CalledProcessError as exc:
        text = (exc.output or b"").decode(errors="replace")
        raise ImageBuildError(step, argv, exc.returncode, output_tail(text)) from exc
    return done.stdout.decode(errors="replace")


class StepReporter:
    """Announces build steps with their elapsed time, to logging and a progress callback."""

    def __init__(self, progress: ProgressCallback | None = None) -> None:
        self._progress = progress
        self._started = time.monotonic()

    def say(self, message: str) -> None:
        """Show ``message``: through the progress callback if there is one, else log it."""
        if self._progress is None:
            log.info("%s", message)
        else:
            log.debug("%s", message)
            self._progress(message)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self.say(f"{name} ...")
        try:
            yield
        except Exception:
            self.say(f"{name} FAILED after {time.monotonic() - started:.1f} s")
            raise
        self.say(f"{name} done in {time.monotonic() - started:.1f} s")
