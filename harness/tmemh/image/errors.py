"""Exceptions raised while building or looking up guest images."""

from __future__ import annotations

from tmemh.procs import command_line


class ImageError(Exception):
    """Base class of the image builder's errors."""


class ImageBuildError(ImageError):
    """A build step failed. Names the command, its exit code and the tail of its output."""

    def __init__(self, step: str, command: list[str] | None = None, exit_code: int | None = None,
                 output_tail: str = "", detail: str = "") -> None:
        self.step = step
        self.command = command
        self.exit_code = exit_code
        self.output_tail = output_tail
        parts = [f"image build step {step!r} failed"]
        if command is not None:
            parts.append(f"command `{command_line(command)}` exited with {exit_code}")
        if detail:
            parts.append(detail)
        message = ": ".join(parts)
        if output_tail:
            message += "\n--- last output ---\n" + output_tail
        super().__init__(message)


class ImageNotFound(ImageError, LookupError):
    """No image is built for the current inputs."""


class InvalidImageOptions(ImageError, ValueError):
    """An image option is invalid (checked before anything is built)."""
