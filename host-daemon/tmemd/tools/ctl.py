"""``tmemd ctl``: send one control request to a running tmemd and print the answer.

    tmemd ctl --control /run/tmemd/control.sock list
    tmemd ctl set-limit 512M
    tmemd ctl set-quota vm1 64M        (a client is named by its name or its id)
    tmemd ctl freeze vm1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..service.config import DEFAULT_CONTROL
from ..service.controlclient import ControlClient, ControlError

log = logging.getLogger(__name__)


def _none_or(raw: str) -> str | None:
    return None if raw.strip().lower() in ("none", "unlimited") else raw


@dataclass(frozen=True)
class Command:
    """A CLI subcommand: the op it sends and its positional arguments (name, help)."""

    name: str
    op: str
    help: str
    params: tuple[tuple[str, str], ...] = ()
    optional_size_param: str | None = None  # "none" / "unlimited" become null


COMMANDS: tuple[Command, ...] = (
    Command("list", "list", "clients, their pools and the connected sessions"),
    Command("stats", "stats", "global and per-client counters as JSON"),
    Command("set-limit", "set_limit", "set the memory limit (e.g. 512M)",
            (("memory_limit", "bytes or a size like 512M"),)),
    Command("set-cap", "set_cap", "set the persistent cap (or 'none' for 3/4 of the limit)",
            (("persistent_cap", "size, or none"),), optional_size_param="persistent_cap"),
    Command("set-quota", "set_quota", "set a client's persistent quota (or 'none')",
            (("client", "client name or id"), ("quota", "size, or none")),
            optional_size_param="quota"),
    Command("freeze", "freeze", "refuse the client's puts from now on", (("client", "client"),)),
    Command("thaw", "thaw", "accept the client's puts again", (("client", "client"),)),
    Command("flush-client", "flush_client", "drop every page of a client (its pools stay)",
            (("client", "client"),)),
    Command("forget", "forget", "drop a departed VM: session, pools, pages (not if connected)",
            (("client", "client"),)),
    Command("shutdown", "shutdown", "ask the daemon to save its state and stop"),
)


def format_list(result: dict[str, Any]) -> str:
    lines = [f"{'id':>4}  {'name':<20} {'pages':>9} {'zbytes':>12} {'quota':>12}  pools"]
    for client in result["clients"]:
        pools = ", ".join(
            f"{p['pool_id']}:{p['kind'][:4]}{'/shared' if p.get('shared') else ''}"
            f"({p['pages']})"
            for p in client.get("pools", [])
        )
        quota = client.get("quota_bytes")
        frozen = " FROZEN" if client.get("frozen") else ""
        lines.append(
            f"{client['client_id']:>4}  {client['name']:<20} {client['pages']:>9}"
            f" {client['zbytes']:>12} {'-' if quota is None else quota:>12}  {pools}{frozen}"
        )
    lines.append(f"{len(result['sessions'])} session(s)")
    for session in result["sessions"]:
        lines.append("  " + " ".join(f"{k}={v}" for k, v in session.items()))
    return "\n".join(lines)


def _format_result(command: Command, result: Any) -> str:
    if command.op == "list":
        return format_list(result)
    if command.op == "stats":
        return json.dumps(result, indent=2)
    if isinstance(result, dict):
        return " ".join(f"{k}={v}" for k, v in result.items())
    return str(result)


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        request: dict[str, Any] = {name: getattr(args, name) for name, _ in command.params}
        if command.optional_size_param:
            request[command.optional_size_param] = _none_or(request[command.optional_size_param])
        if command.op == "stats" and args.client is not None:
            request["client"] = args.client
        try:
            with ControlClient(args.control, timeout=args.timeout) as control:
                result = control.call(command.op, **request)
        except ControlError as exc:
            print(f"tmemd ctl {command.name}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2) if args.json else _format_result(command, result))
        return 0

    return run


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("ctl", help="send a control request to a running tmemd")
    parser.add_argument("--control", default=DEFAULT_CONTROL, metavar="PATH",
                        help=f"control socket (default: {DEFAULT_CONTROL})")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply")
    commands = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        for name, help_text in command.params:
            sub.add_argument(name, help=help_text)
        if command.op == "stats":
            sub.add_argument("--client", help="only this client (name or id)")
        sub.set_defaults(func=_runner(command))
