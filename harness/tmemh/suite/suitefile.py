"""Suite files (TOML): workloads x memory configurations x repetitions x VM shapes x disk
throttle profiles, and the matrix of cells they expand to.

    [suite]
    name = "demo"
    workloads = ["rsync", "tar", "anon"]          # names: built in or [workload.NAME]
    configurations = ["disk-swap", "zswap"]       # built in or [configuration.NAME]
    throttle = ["hdd"]                            # none, ssd, hdd or [throttle_profile.NAME]
    repetitions = 1
    seed = 1                                      # the workloads' data
    sample_interval = 1.0                         # seconds between collector samples
    collectors = ["on"]                           # ["on", "off"] measures what they cost
    trace = "off"                                 # "ops", "pages": the agent's trace of
                                                  # each tmem cell (docs/trace.md)

    [vm]                                          # or [[vm]] tables, each with a name
    memory = "256M"
    cpus = 1
    disk_size = "4G"                              # grows the root file system
    data_disk = "2G"                              # the workloads' disk (default: datadisk)

    [workload.rsync]                              # parameters of a workload
    scale = 0.5

    [configuration.zswap-big]                     # a configuration of one's own
    kind = "zswap"
    max_pool_percent = 40

Everything is checked when the file is loaded (:class:`SuiteError`, exit 2), before any VM
starts. :meth:`Suite.describe` is the suite as resolved, which each run saves.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmemd.units import format_size, parse_size

from .configkinds import make_configuration
from .configs import MemoryConfiguration
from .datadisk import default_size_mib
from .errors import SuiteError
from .profiles import BUILTIN_PROFILES, ThrottleProfile, profile_from_table
from .tracing import check_mode
from .workloads import Workload, make_workload

TOP_KEYS = ("suite", "vm", "workload", "configuration", "throttle_profile")
SUITE_KEYS = ("name", "description", "workloads", "configurations", "throttle", "repetitions",
              "seed", "sample_interval", "collectors", "trace")
VM_KEYS = ("name", "memory", "cpus", "disk_size", "data_disk")
DEFAULT_MEMORY = "256M"


@dataclass(frozen=True)
class VMShape:
    name: str
    memory_mib: int
    vcpus: int = 1
    disk_size_mib: int | None = None
    data_disk_mib: int | None = None  # None: datadisk.default_size_mib(memory_mib)

    @property
    def data_disk_size_mib(self) -> int:
        return self.data_disk_mib or default_size_mib(self.memory_mib)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "memory_mib": self.memory_mib, "vcpus": self.vcpus,
                "disk_size_mib": self.disk_size_mib, "data_disk_mib": self.data_disk_size_mib}


@dataclass(frozen=True)
class Cell:
    """One VM run: a workload under a configuration, throttle profile and shape."""

    index: int
    workload: Workload
    configuration: MemoryConfiguration
    throttle: ThrottleProfile
    shape: VMShape
    repetition: int
    collectors: bool
    seed: int
    trace: str = "off"  # the agent's trace: off, ops, pages (tracing.MODES)

    @property
    def id(self) -> str:
        base = (f"{self.workload.name}.{self.configuration.name}.{self.throttle.name}."
                f"{self.shape.name}.r{self.repetition}")
        return base if self.collectors else base + ".nocollect"

    @property
    def group(self) -> tuple[str, str, str, str, bool]:
        """What the repetitions of one cell share."""
        return (self.workload.name, self.configuration.name, self.throttle.name,
                self.shape.name, self.collectors)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    source: Path | None
    workloads: tuple[Workload, ...]
    configurations: tuple[MemoryConfiguration, ...]
    throttles: tuple[ThrottleProfile, ...]
    shapes: tuple[VMShape, ...]
    repetitions: int = 1
    seed: int = 1
    sample_interval: float = 1.0
    collectors: tuple[bool, ...] = (True,)
    trace: str = "off"

    def cells(self) -> list[Cell]:
        """The matrix, repetitions outermost (so slow drift spreads over every cell)."""
        cells: list[Cell] = []
        for repetition in range(1, self.repetitions + 1):
            for shape in self.shapes:
                for throttle in self.throttles:
                    for workload in self.workloads:
                        for configuration in self.configurations:
                            for collectors in self.collectors:
                                cells.append(Cell(len(cells), workload, configuration,
                                                  throttle, shape, repetition, collectors,
                                                  self.seed, self.trace))
        return cells

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description,
            "source": str(self.source) if self.source else None,
            "repetitions": self.repetitions, "seed": self.seed,
            "sample_interval": self.sample_interval,
            "collectors": ["on" if c else "off" for c in self.collectors],
            "trace": self.trace,
            "workloads": [w.describe() for w in self.workloads],
            "configurations": [c.describe() for c in self.configurations],
            "throttle": [t.describe() for t in self.throttles],
            "vm": [s.describe() for s in self.shapes],
        }


def load_suite(path: Path) -> Suite:
    """Read and check a suite file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SuiteError(f"cannot read suite file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_suite(data, Path(path))
    except SuiteError as exc:
        raise SuiteError(f"{path}: {exc}") from None


def parse_suite(data: dict[str, Any], source: Path | None = None) -> Suite:
    """A suite from a parsed TOML document."""
    _no_unknown("the file", data, TOP_KEYS)
    head = _table(data, "suite")
    _no_unknown("[suite]", head, SUITE_KEYS)
    name = head.get("name") or (source.stem if source else "suite")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise SuiteError(f"suite name {name!r}: use letters, digits, '-' and '_'")
    workload_tables = _table(data, "workload")
    configuration_tables = _table(data, "configuration")
    profile_tables = _table(data, "throttle_profile")
    workloads = tuple(make_workload(n, _table(workload_tables, n))
                      for n in _names(head, "workloads", None))
    configurations = tuple(make_configuration(n, _table(configuration_tables, n))
                           for n in _names(head, "configurations", None))
    throttles = tuple(_profile(n, profile_tables) for n in _names(head, "throttle", ["none"]))
    collectors = tuple(_collectors(v) for v in _names(head, "collectors", ["on"]))
    return Suite(
        name=name, description=str(head.get("description", "")), source=source,
        workloads=workloads, configurations=configurations, throttles=throttles,
        shapes=_shapes(data.get("vm", {})),
        repetitions=_int(head, "repetitions", 1, 1, 1000),
        seed=_int(head, "seed", 1, 0, 2**31 - 1),
        sample_interval=_interval(head.get("sample_interval", 1.0)),
        collectors=collectors, trace=check_mode(head.get("trace", "off")))


def _no_unknown(where: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SuiteError(f"{where}: unknown keys {unknown} (known: {', '.join(known)})")


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SuiteError(f"{key} must be a table")
    return value


def _names(head: dict[str, Any], key: str, default: list[str] | None) -> list[str]:
    value = head.get(key, default)
    if value is None:
        raise SuiteError(f"[suite] needs {key} = [...]")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"[suite] {key} must be a non-empty list of names")
    if len(set(value)) != len(value):
        raise SuiteError(f"[suite] {key} names one entry twice: {value}")
    return value


def _int(head: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = head.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SuiteError(f"[suite] {key} must be an integer in [{low}, {high}]: {value!r}")
    return value


def _interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.1 <= value <= 60:
        raise SuiteError(f"[suite] sample_interval must be seconds in [0.1, 60]: {value!r}")
    return float(value)


def _collectors(value: str) -> bool:
    if value not in ("on", "off"):
        raise SuiteError(f"[suite] collectors must list 'on' and/or 'off', not {value!r}")
    return value == "on"


def _profile(name: str, tables: dict[str, Any]) -> ThrottleProfile:
    if name in tables:
        return profile_from_table(name, _table(tables, name))
    if name in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name]
    raise SuiteError(f"unknown throttle profile {name!r} (built in: "
                     f"{', '.join(BUILTIN_PROFILES)}; or define [throttle_profile.{name}])")


def _size_mib(where: str, value: Any) -> int:
    try:
        size = value << 20 if isinstance(value, int) and not isinstance(value, bool) \
            else parse_size(value)
    except ValueError as exc:
        raise SuiteError(f"{where}: {exc}") from None
    if size % (1 << 20) or size <= 0:
        raise SuiteError(f"{where}: {value!r} is not a whole, positive number of MiB")
    return size >> 20


def _shapes(value: Any) -> tuple[VMShape, ...]:
    tables = [value] if isinstance(value, dict) else value
    if not isinstance(tables, list) or not tables or \
            not all(isinstance(t, dict) for t in tables):
        raise SuiteError("vm must be a table or a list of [[vm]] tables")
    shapes = []
    for table in tables:
        _no_unknown("[vm]", table, VM_KEYS)
        memory = _size_mib("vm memory (a plain number is MiB)",
                           table.get("memory", DEFAULT_MEMORY))
        cpus = table.get("cpus", 1)
        if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= 64:
            raise SuiteError(f"vm cpus must be an integer in [1, 64]: {cpus!r}")
        disk = table.get("disk_size")
        disk_mib = None if disk is None else _size_mib("vm disk_size", disk)
        data = table.get("data_disk")
        data_mib = None if data is None else _size_mib("vm data_disk", data)
        default_name = f"{format_size(memory << 20)}" + (f"x{cpus}" if cpus > 1 else "")
        name = table.get("name", default_name)
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            raise SuiteError(f"vm name {name!r}: no dots or slashes")
        shapes.append(VMShape(name, memory, cpus, disk_mib, data_mib))
    if len({s.name for s in shapes}) != len(shapes):
        raise SuiteError("[[vm]] shapes need distinct names")
    return tuple(shapes)
