"""The workloads a suite can name, seen from the host: their kinds, parameters and limits.

The work itself happens in the guest (:mod:`tmemh.suite.guest`); here a workload is a name, a
kind (one of the guest's workloads), the parameters passed to it as JSON, checked before
anything starts, and how long its phases may take. Built-in names: ``rsync``, ``tar``,
``anon``, ``anon-random`` (anon with incompressible pages) and ``pagecache``; a suite file
defines more with ``[workload.NAME]`` tables (``kind = "anon"``, parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import SuiteError

DEFAULT_SETUP_TIMEOUT_S = 1800.0
DEFAULT_RUN_TIMEOUT_S = 1800.0

_NUMBER = "number"
_COMMON = {"scale": _NUMBER, "ballast": _NUMBER, "ballast_touch_mib_s": _NUMBER}
KIND_PARAMS: dict[str, dict[str, Any]] = {
    "rsync": {**_COMMON, "files_per_mib": _NUMBER},
    "tar": {**_COMMON, "files_per_mib": _NUMBER, "compression": ("none", "gzip", "xz")},
    "anon": {"scale": _NUMBER, "pages": ("realistic", "random"), "uffd": _NUMBER,
             "uffd_resident": _NUMBER},
    "pagecache": {**_COMMON, "passes": _NUMBER},
}
HOST_KEYS = ("kind", "setup_timeout", "timeout")
BUILTIN: dict[str, dict[str, Any]] = {
    "rsync": {"kind": "rsync"},
    "tar": {"kind": "tar"},
    "anon": {"kind": "anon"},
    "anon-random": {"kind": "anon", "pages": "random"},
    "pagecache": {"kind": "pagecache"},
}


@dataclass(frozen=True)
class Workload:
    """A named workload: the guest workload ``kind`` with ``params``."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    setup_timeout: float = DEFAULT_SETUP_TIMEOUT_S
    timeout: float = DEFAULT_RUN_TIMEOUT_S

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": dict(self.params),
                "setup_timeout": self.setup_timeout, "timeout": self.timeout}


def _check_param(where: str, key: str, value: Any, rule: Any) -> None:
    if rule == _NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise SuiteError(f"{where}: {key} must be a number >= 0, not {value!r}")
    elif value not in rule:
        raise SuiteError(f"{where}: {key} must be one of {list(rule)}, not {value!r}")


def _timeout(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SuiteError(f"{where}: {key} must be a number of seconds > 0, not {value!r}")
    return float(value)


def make_workload(name: str, table: dict[str, Any] | None = None) -> Workload:
    """The workload ``name``: a built-in one, with ``table`` (the suite file's
    ``[workload.NAME]``) adding or overriding parameters, or one the table defines."""
    where = f"workload {name}"
    merged = {**BUILTIN.get(name, {}), **(table or {})}
    kind = merged.get("kind")
    if kind is None:
        raise SuiteError(f"{where}: unknown workload (built in: {', '.join(BUILTIN)}); "
                         "define it with a [workload.NAME] table and a kind")
    if kind not in KIND_PARAMS:
        raise SuiteError(f"{where}: unknown kind {kind!r} (use one of {list(KIND_PARAMS)})")
    allowed = KIND_PARAMS[kind]
    params = {}
    for key, value in merged.items():
        if key in HOST_KEYS:
            continue
        if key not in allowed:
            raise SuiteError(f"{where}: unknown parameter {key!r} for kind {kind} "
                             f"(use {', '.join(sorted(allowed))})")
        _check_param(where, key, value, allowed[key])
        params[key] = value
    return Workload(
        name, kind, params,
        setup_timeout=_timeout(where, "setup_timeout",
                               merged.get("setup_timeout", DEFAULT_SETUP_TIMEOUT_S)),
        timeout=_timeout(where, "timeout", merged.get("timeout", DEFAULT_RUN_TIMEOUT_S)))
