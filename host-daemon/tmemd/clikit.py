"""Plumbing shared by the project's command lines (``tmemd``, ``tmemh``).

A command line is a list of subcommand modules; each provides ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` (called with the parsed namespace, returning
an exit code). The front ends stay thin dispatchers.

The conventions every command follows live here (the guest's ``tmem-agent``, standard library
only, mirrors them in its own ``cli.py``):

- exit codes: 0 success, 1 runtime failure (:class:`CommandError`, OSError and the front end's
  domain errors), 2 usage error (:class:`UsageError`: bad arguments, values or environment
  variables; also what argparse rejects), 130 interrupted (Ctrl-C);
- every error is one line on stderr, ``PROG: error: MESSAGE``; a domain error may add detail
  lines after it (a VM's console tail). A traceback only with ``-v``/``--verbose``;
- ``--help`` shows each option's default (:class:`HelpFormatter`, on every subparser);
- sizes take units (:func:`size_arg`), aligned output goes through rich (:func:`print_table`).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from rich import box
from rich.console import Console
from rich.table import Table

from .units import parse_size

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

ErrorTypes = tuple[type[BaseException], ...]


class CommandError(Exception):
    """A runtime failure, reported as one line; exit code 1."""

    exit_code = EXIT_FAILURE


class UsageError(CommandError):
    """Bad arguments, option values or environment variables; exit code 2."""

    exit_code = EXIT_USAGE


# ----- help -------------------------------------------------------------------------------------
def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    if isinstance(default, list | tuple) and not default:
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL,
                                                           argparse.ZERO_OR_MORE)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after an option's help, also for options without help text;
    not for defaults that say nothing (None, False, an empty list) nor twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "(default" in text or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser with :class:`HelpFormatter` whose errors raise :class:`UsageError`.

    Subparsers are made of the same class (argparse's ``add_subparsers`` uses the parent's
    class), so every subcommand gets the same help and error handling.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        words = self.prog.split(maxsplit=1)
        raise UsageError(f"{words[1]}: {message}" if len(words) > 1 else message)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and a traceback with an error")


EXIT_STATUS_HELP = ("exit status: 0 success, 1 failure, 2 usage error (bad arguments, values or "
                    "environment), 130 interrupted")


def build_parser(prog: str, description: str, modules: tuple[str, ...]) -> CliParser:
    parser = CliParser(prog=prog, description=description, epilog=EXIT_STATUS_HELP)
    add_verbose(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).add_parser(sub)
    return parser


# ----- argument types ---------------------------------------------------------------------------
def size_arg(raw: str) -> int:
    """argparse type: bytes from ``4096``, ``64K``, ``20M``, ``1G`` (a plain number is bytes)."""
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size_or_none_arg(raw: str) -> int | None:
    """Like :func:`size_arg`; ``none`` or ``unlimited`` give None."""
    if raw.strip().lower() in ("none", "unlimited"):
        return None
    return size_arg(raw)


def mib_arg(raw: str) -> int:
    """argparse type: MiB from a size; a plain number is MiB, as QEMU's ``-m`` reads it
    (``512``, ``512M``, ``1G``, ``1GiB``). A size in bytes must be a whole number of MiB."""
    text = raw.strip()
    if text.isdigit():
        return int(text)
    nbytes = size_arg(raw)
    if nbytes % (1 << 20):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number of MiB")
    return nbytes >> 20


# ----- running ----------------------------------------------------------------------------------
def describe(exc: BaseException) -> str:
    """An exception's message; an OSError as ``FILE: reason`` rather than ``[Errno N] ...``."""
    if isinstance(exc, OSError) and exc.strerror:
        where = ": ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc).strip()


def report_error(prog: str, exc: BaseException, *, verbose: bool = False,
                 expected: bool = True) -> None:
    """``PROG: error: MESSAGE`` on stderr; with ``verbose`` the traceback first. An unexpected
    exception is named by its type (its message alone may say little, e.g. a KeyError)."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = describe(exc)
    if not expected or not message:
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        if not verbose and not expected:
            message += " (-v shows the traceback)"
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *,
        usage_errors: ErrorTypes = (), failures: ErrorTypes = ()) -> int:
    """Parse ``argv``, run the chosen subcommand and map what it raises to an exit code.

    ``usage_errors`` are the front end's domain exceptions that mean bad input (exit 2, like
    :class:`UsageError`); ``failures`` those that are runtime failures with a message worth
    showing as it is (exit 1, like :class:`CommandError` and OSError). Anything else is
    reported with its type name and exits 1.
    """
    prog = parser.prog
    usage: ErrorTypes = (UsageError, *usage_errors)
    failed: ErrorTypes = (CommandError, OSError, *failures)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        report_error(prog, exc)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except usage as exc:
        report_error(prog, exc, verbose=verbose)
        return EXIT_USAGE
    except failed as exc:
        report_error(prog, exc, verbose=verbose)
        return EXIT_FAILURE
    except Exception as exc:  # a bug: one line, the traceback with -v
        report_error(prog, exc, verbose=verbose, expected=False)
        return EXIT_FAILURE


# ----- output -----------------------------------------------------------------------------------
def new_table(*columns: str, right: Sequence[str] = (), title: str | None = None) -> Table:
    """A rich table with these column headers; columns named in ``right`` are right-aligned."""
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", title_style="bold",
                  show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    return table


def table_text(table: Table, width: int = 100_000) -> str:
    """The table as plain text: no box, no colour, no wrapping, no trailing blanks."""
    plain = copy.copy(table)
    plain.box = None
    plain.title = None
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False,
                      force_terminal=False, emoji=False, markup=False)
    with console.capture() as captured:
        console.print(plain)
    return "\n".join(line.rstrip() for line in captured.get().splitlines() if line.strip())


def print_table(table: Table, file: IO[str] | None = None) -> None:
    """Print ``table``: drawn with rich on a terminal, plain greppable columns otherwise."""
    out = sys.stdout if file is None else file
    console = Console(file=out, highlight=False)
    if console.is_terminal:
        console.print(table)
    else:
        print(table_text(table), file=out)


def target(value: float, op: str, limit: float) -> dict[str, Any]:
    """One benchmark target as reports carry it: the measured ratio, the goal, met or not."""
    ok = value >= limit if op == ">=" else value <= limit
    return {"ratio": round(value, 3), "target": f"{op} {limit}", "ok": ok}


def finish_report(report: dict[str, Any], json_path: str | None, strict: bool) -> int:
    """Print a benchmark report as JSON (and write it to ``json_path``); name missed targets.

    ``report["targets"]`` maps target names to ``{"ok": bool, ...}``. The exit code is 1 when a
    target was missed and ``strict`` is set, else 0.
    """
    text = json.dumps(report, indent=2)
    if json_path:
        Path(json_path).write_text(text + "\n")
        log.info("wrote %s", json_path)
    print(text)
    missed = [name for name, target in report["targets"].items() if not target["ok"]]
    if missed:
        log.warning("targets missed: %s", ", ".join(missed))
    return 1 if missed and strict else 0
