"""The daemon's configuration: one definition per option, read from a TOML file and the CLI.

Every option is a field of :class:`DaemonConfig` declared with :func:`option`, which carries
its default, help text and value kind (the parser and validator). From that single table come
the argparse arguments (``--memory-limit``), the TOML keys (``memory_limit``), the error
messages and the dumps. Precedence: command line over config file over default.

Sizes accept plain bytes or a number with a binary suffix: ``4096``, ``"256M"``, ``"1G"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import PAGE_SIZE
from ..clikit import UsageError
from ..store.codecs import CODEC_NAMES, DEFAULT_CODEC
from ..store.errors import ConfigError
from ..store.storeconfig import MAX_CLIENTS_LIMIT, StoreConfig
from ..units import format_size, parse_size
from .limits import ConnectionLimits

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/tmemd/tmemd.sock"
DEFAULT_CONTROL = "/run/tmemd/control.sock"
DEFAULT_VM_SOCKET_DIR = "/run/tmemd/vms"
DEFAULT_METRICS_MAX_CLIENTS = 100
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SOURCE_DEFAULT = "default"
SOURCE_CLI = "command line"



@dataclass(frozen=True)
class ValueKind:
    """How to turn a raw value (a CLI string or a TOML value) into a checked option value.

    ``convert`` raises ValueError with a message that says what was wrong.
    """

    metavar: str
    convert: Callable[[object], Any]


def _int(raw: object) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw)
    raise ValueError(f"expected an integer, got {raw!r}")


def _text(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a non-empty string, got {raw!r}")
    return raw


def _optional(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    """Accept the string "none" (any case) as "unset" besides what ``convert`` accepts."""

    def convert_optional(raw: object) -> Any:
        if isinstance(raw, str) and raw.strip().lower() == "none":
            return None
        return convert(raw)

    return convert_optional


def _size_at_least(minimum: int, multiple_of: int = 1) -> Callable[[object], int]:
    def convert(raw: object) -> int:
        value = parse_size(raw)
        if value < minimum:
            raise ValueError(f"size {raw!r} is below the minimum of {minimum} bytes")
        if value % multiple_of:
            raise ValueError(f"size {raw!r} is not a multiple of {multiple_of} bytes")
        return value

    return convert


def _int_between(low: int, high: int) -> Callable[[object], int]:
    def convert(raw: object) -> int:
        value = _int(raw)
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}..{high}")
        return value

    return convert


def _choice(choices: tuple[str, ...], fold: Callable[[str], str]) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        value = fold(_text(raw).strip())
        if value not in choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(choices)}")
        return value

    return convert


def _positive_seconds(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"expected a number of seconds, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    if not 0 < value < float("inf"):  # also refuses NaN
        raise ValueError(f"{raw!r} seconds: must be > 0")
    return value


def _flag(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {raw!r}")
    return raw


PATH = ValueKind("PATH", _text)
OPTIONAL_PATH = ValueKind("PATH", _optional(_text))
HOST = ValueKind("HOST", _text)
PORT = ValueKind("PORT", _int_between(0, 65535))
MEMORY_SIZE = ValueKind("SIZE", _size_at_least(PAGE_SIZE, PAGE_SIZE))
OPTIONAL_MEMORY_SIZE = ValueKind("SIZE", _optional(_size_at_least(PAGE_SIZE, PAGE_SIZE)))
OPTIONAL_QUOTA = ValueKind("SIZE", _optional(_size_at_least(0)))
ZSIZE = ValueKind("BYTES", _int_between(1, PAGE_SIZE))
CODEC = ValueKind("CODEC", _choice(CODEC_NAMES, str.lower))
LOG_LEVEL = ValueKind("LEVEL", _choice(LOG_LEVELS, str.upper))
FLAG = ValueKind("", _flag)
SECONDS = ValueKind("SECONDS", _positive_seconds)
CONNECTIONS = ValueKind("N", _int_between(1, 65536))
CLIENTS = ValueKind("N", _int_between(1, MAX_CLIENTS_LIMIT))
COUNT = ValueKind("N", _int_between(0, 1 << 20))


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name (the TOML key; ``--name-with-dashes`` on the CLI) and meaning."""

    name: str
    default: Any
    kind: ValueKind
    help: str
    in_file: bool = True  # False: command line only (the config file's own path)

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, raw: object) -> Any:
        return self.kind.convert(raw)


def option(default: Any, kind: ValueKind, help: str, in_file: bool = True) -> Any:
    """Declare a DaemonConfig field as an option; the field name becomes the option name."""
    meta = {"option": (default, kind, help, in_file)}
    return field(default=default, metadata=meta)


_STORE = StoreConfig()  # the store's and the server's own defaults are the options' defaults
_LIMITS = ConnectionLimits()


@dataclass(frozen=True)
class DaemonConfig:
    """The effective configuration of one tmemd. Build it with :func:`resolve_config`."""

    socket: str = option(
        DEFAULT_SOCKET, PATH,
        "the operator's unix socket (mode 0600) for trusted local tools; hellos name the VM",
    )
    vm_socket_dir: str = option(
        DEFAULT_VM_SOCKET_DIR, PATH,
        "directory (created 0711) of the sockets of admitted VMs, one per VM",
    )
    control: str = option(DEFAULT_CONTROL, PATH, "unix socket for control requests (JSON lines)")
    config: str | None = option(None, OPTIONAL_PATH, "TOML configuration file", in_file=False)
    metrics_host: str = option("127.0.0.1", HOST, "address of the Prometheus metrics endpoint")
    metrics_port: int = option(0, PORT, "port of the Prometheus metrics endpoint; 0 = off")
    metrics_allow_remote: bool = option(
        False, FLAG, "allow a metrics address that is not loopback"
    )
    metrics_max_clients: int = option(
        DEFAULT_METRICS_MAX_CLIENTS, COUNT,
        "per-client metrics for at most this many clients (those holding the most bytes);"
        " the others are summed up",
    )
    state_file: str | None = option(
        None, OPTIONAL_PATH,
        "file to save persistent pages to at shutdown and load at start, in a directory only"
        " tmemd's user can write (docs/state-file.md); unset: pages are lost at a restart",
    )
    discard_state: bool = option(
        False, FLAG, "start empty: move an existing state file aside (renamed with the time)"
        " instead of restoring it", in_file=False,
    )
    memory_limit: int = option(
        _STORE.memory_limit_bytes, MEMORY_SIZE, "host memory for compressed pages"
    )
    persistent_cap: int | None = option(
        None, OPTIONAL_MEMORY_SIZE, "memory for persistent pages; default 3/4 of the limit"
    )
    codec: str = option(DEFAULT_CODEC, CODEC, f"compressor: {' | '.join(CODEC_NAMES)}")
    max_persistent_zsize: int = option(
        _STORE.max_persistent_zsize, ZSIZE,
        "persistent pages compressing worse than this are refused",
    )
    default_quota: int | None = option(
        None, OPTIONAL_QUOTA,
        "bytes each new client may hold (compressed pages plus their metadata charge);"
        " default unlimited",
    )
    max_clients: int = option(
        _STORE.max_clients, CLIENTS, "clients (VMs) the store keeps at once; more are refused"
    )
    dedup: bool = option(
        _STORE.dedup, FLAG,
        "store identical ephemeral pages of one VM once (confirmed byte for byte, never"
        " across VMs; docs/dedup.md)",
    )
    log_level: str = option("INFO", LOG_LEVEL, f"log level: {' | '.join(LOG_LEVELS)}")
    stall_timeout: float = option(
        _LIMITS.stall_timeout, SECONDS,
        "drop a frame still incomplete this long after it began (TCG is slow)",
    )
    max_connections: int = option(
        _LIMITS.max_connections, CONNECTIONS, "guest streams at once; more are closed"
    )
    hello_timeout: float = option(
        _LIMITS.hello_timeout, SECONDS,
        "close a guest stream that has not completed hello after this long (on a VM's own"
        " socket: counted from its first byte)",
    )
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check_combination()

    def _check_combination(self) -> None:
        if self.persistent_cap is not None and self.persistent_cap > self.memory_limit:
            raise ConfigError(
                f"persistent_cap {format_size(self.persistent_cap)}"
                f" ({self.source_of('persistent_cap')})"
                f" exceeds memory_limit {format_size(self.memory_limit)}"
                f" ({self.source_of('memory_limit')})"
            )
        if self.discard_state and self.state_file is None:
            raise ConfigError("discard_state (command line) needs a state_file")
        if not self.metrics_allow_remote and not is_loopback(self.metrics_host):
            raise ConfigError(
                f"metrics_host {self.metrics_host!r} ({self.source_of('metrics_host')}) is not a"
                " loopback address; set metrics_allow_remote to expose metrics beyond this host"
            )

    def source_of(self, name: str) -> str:
        return self.sources.get(name, SOURCE_DEFAULT)

    def as_dict(self) -> dict[str, Any]:
        return {spec.name: getattr(self, spec.name) for spec in OPTIONS}

    def describe(self) -> str:
        """Every option with its value and where it came from, one per line, for the log."""
        lines = ["effective configuration:"]
        for spec in OPTIONS:
            value = getattr(self, spec.name)
            lines.append(f"  {spec.name} = {_show(spec, value)}  ({self.source_of(spec.name)})")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False)

    def to_toml(self) -> str:
        """A config file that reproduces this configuration (unset options as comments)."""
        lines = ["# tmemd configuration"]
        for spec in OPTIONS:
            if not spec.in_file:
                continue
            lines.append(f"# {spec.help}")
            value = getattr(self, spec.name)
            if value is None:
                lines.append(f"# {spec.name} = (unset)")
            else:
                lines.append(f"{spec.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def store_config(self) -> StoreConfig:
        return StoreConfig(
            memory_limit_bytes=self.memory_limit,
            persistent_cap_bytes=self.persistent_cap,
            codec=self.codec,
            max_persistent_zsize=self.max_persistent_zsize,
            max_clients=self.max_clients,
            dedup=self.dedup,
        )

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(self.stall_timeout, self.max_connections, self.hello_timeout)


OPTIONS: tuple[OptionSpec, ...] = tuple(
    OptionSpec(f.name, *f.metadata["option"])
    for f in dataclasses.fields(DaemonConfig)
    if "option" in f.metadata
)
_BY_NAME = {spec.name: spec for spec in OPTIONS}


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _show(spec: OptionSpec, value: Any) -> str:
    if value is not None and spec.kind.metavar == "SIZE":
        return f"{format_size(value)} ({value} bytes)"
    return str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _argparse_type(spec: OptionSpec) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return spec.convert(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = spec.kind.metavar.lower() or spec.name
    return convert


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--option`` per config option; options not given stay absent from the namespace.

    (Absent, not None: ``--persistent-cap none`` must override a value from the file.)
    """
    group = parser.add_argument_group("configuration (command line overrides the config file)")
    for spec in OPTIONS:
        if spec.kind is FLAG:
            group.add_argument(spec.cli_flag, dest=spec.name, action="store_true",
                               default=argparse.SUPPRESS, help=spec.help)
        else:
            # an unset (None) default shows nothing: the help says what unset means
            shown = "" if spec.default is None else f" (default: {_show(spec, spec.default)})"
            group.add_argument(spec.cli_flag, dest=spec.name, metavar=spec.kind.metavar,
                               type=_argparse_type(spec), default=argparse.SUPPRESS,
                               help=spec.help + shown)


def load_config_file(path: str) -> dict[str, Any]:
    """Checked option values from a TOML file; ConfigError naming the file and key otherwise."""
    try:
        with open(path, "rb") as stream:
            table = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for key, raw in table.items():
        spec = _BY_NAME.get(key)
        if spec is None or not spec.in_file:
            known = ", ".join(s.name for s in OPTIONS if s.in_file)
            raise ConfigError(f"config file {path}: unknown key {key!r} (known keys: {known})")
        try:
            values[key] = spec.convert(raw)
        except ValueError as exc:
            raise ConfigError(f"config file {path}: key {key!r}: {exc}") from exc
    return values


def resolve_config(args: argparse.Namespace) -> DaemonConfig:
    """The effective configuration: command line over config file over defaults."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_path = getattr(args, "config", None)
    if config_path is not None:
        for name, value in load_config_file(config_path).items():
            values[name] = value
            sources[name] = f"file {config_path}"
    given = vars(args)
    for spec in OPTIONS:
        if spec.name in given:
            values[spec.name] = given[spec.name]
            sources[spec.name] = SOURCE_CLI
    return DaemonConfig(**values, sources=sources)


def _print_config(args: argparse.Namespace) -> int:
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        raise UsageError(f"config: {exc}") from exc
    print(config.to_json() if args.format == "json" else config.to_toml(), end="")
    return 0


def add_parser(subparsers: Any) -> None:
    """``tmemd config``: print the effective configuration (to check it, or to start a file)."""
    parser = subparsers.add_parser(
        "config", help="print the effective configuration as TOML or JSON"
    )
    parser.add_argument("--format", choices=("toml", "json"), default="toml")
    add_config_arguments(parser)
    parser.set_defaults(func=_print_config)
