"""Plumbing shared by the project's command lines (``tmemd``, ``tmemh``).

A command line is a list of subcommand modules; each provides ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` (called with the parsed namespace, returning
an exit code). The front ends stay thin dispatchers.
"""

from __future__ import annotations

import argparse
import importlib
import logging


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
