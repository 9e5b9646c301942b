"""Plumbing shared by the project's command lines (``tmemd``, ``tmemh``).

A command line is a list of subcommand modules; each provides ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` (called with the parsed namespace, returning
an exit code). The front ends stay thin dispatchers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def build_parser(prog: str, description: str, modules: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in modules:
        importlib.import_module(name).add_parser(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


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
