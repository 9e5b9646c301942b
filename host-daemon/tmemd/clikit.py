"""Plumbing shared by the project's command lines (``tmemd``, ``tmemh``).

A command line is a list of subcommand modules; each provides ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` (called with the parsed namespace, returning
an exit code). The front ends stay thin dispatchers.

The conventions every command follows (exit codes 0/1/2/130, one ``PROG: error:`` line, a
traceback only with ``-v``, defaults in ``--help``) are defined once, standard library only, in
:mod:`tmem_agent.clibase`, which the guest's ``tmem-agent`` uses too; this module re-exports
them and adds what only the host has: the front end's domain errors mapped to exit codes
(:func:`run`; a domain error may add detail lines, such as a VM's console tail), sizes with
units (:func:`size_arg`) and aligned output through rich (:func:`print_table`).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.table import Table

from tmem_agent.clibase import (  # noqa: F401 - the conventions, re-exported for the host CLIs
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    CliParser,
    CommandError,
    ErrorTypes,
    HelpFormatter,
    UsageError,
    add_verbose,
    describe,
    report_error,
    run,
)

from .units import parse_size

log = logging.getLogger(__name__)

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
