"""The suite's errors: a bad suite file or run reference is a usage error (exit 2), anything
that stops a whole run is a failure (exit 1). A cell's own problems never raise past the cell:
they become its ERROR or SKIP status."""

from __future__ import annotations

from tmemd.clikit import CommandError, UsageError


class SuiteError(UsageError):
    """The suite file, or a name or value in it, is invalid (nothing was started)."""


class RunNotFound(UsageError):
    """No run directory or indexed run matches what was asked for."""


class RunFailed(CommandError):
    """The run as a whole cannot go on (no image, no results directory)."""


class ConfigurationUnavailable(Exception):
    """A memory configuration cannot be used here; the message is the SKIP reason."""
