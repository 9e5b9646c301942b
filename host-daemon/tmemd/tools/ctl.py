"""``tmemd ctl``: send one control request to a running tmemd and print the answer.

    tmemd ctl --control /run/tmemd/control.sock list [--offset 100 --limit 100]
    tmemd ctl set-limit 512M
    tmemd ctl set-quota vm1 64M        (a client is named by its name or its id)
    tmemd ctl freeze vm1
    tmemd ctl admit vm1 --owner libvirt-qemu   (prints the VM's socket path)
    tmemd ctl share-allow vm1 0123456789abcdef0123456789abcdef
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from ..clikit import new_table, print_table, size_arg, size_or_none_arg, table_text
from ..service.config import DEFAULT_CONTROL
from ..service.controlclient import ControlClient

log = logging.getLogger(__name__)


def count_arg(raw: str) -> int:
    """argparse type: an integer >= 0."""
    if not raw.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Option:
    """An optional ``--name VALUE`` of a subcommand; sent as argument ``name`` when given."""

    name: str
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None


@dataclass(frozen=True)
class Command:
    """A CLI subcommand: the op it sends, its positional arguments (name, help) and options."""

    name: str
    op: str
    help: str
    params: tuple[tuple[str, str], ...] = ()
    types: tuple[tuple[str, Callable[[str], Any]], ...] = ()  # parameters that are not names
    options: tuple[Option, ...] = ()


PAGE = (Option("offset", "skip this many entries of each listing", count_arg, "N"),
        Option("limit", "entries of each listing (1..1000; the daemon's default is 100)",
               count_arg, "N"))
VM = ("vm", "VM name: letters, digits, '.', '_', '-' (at most 63)")
UUID = ("uuid", "the shared pool's uuid: 32 hex digits (dashes allowed)")

COMMANDS: tuple[Command, ...] = (
    Command("list", "list", "clients, their pools, the sessions and the admitted VMs, a page"
            " at a time", options=PAGE),
    Command("stats", "stats", "global and per-client counters as JSON",
            options=(Option("client", "only this client (name or id)"), *PAGE)),
    Command("set-limit", "set_limit", "set the memory limit (e.g. 512M)",
            (("memory_limit", "bytes or a size like 512M"),), (("memory_limit", size_arg),)),
    Command("set-cap", "set_cap", "set the persistent cap (or 'none' for 3/4 of the limit)",
            (("persistent_cap", "a size like 256M, or none"),),
            (("persistent_cap", size_or_none_arg),)),
    Command("set-quota", "set_quota", "set a client's persistent quota (or 'none')",
            (("client", "client name or id"), ("quota", "a size like 64M, or none")),
            (("quota", size_or_none_arg),)),
    Command("freeze", "freeze", "refuse the client's puts from now on", (("client", "client"),)),
    Command("thaw", "thaw", "accept the client's puts again", (("client", "client"),)),
    Command("flush-client", "flush_client", "drop every page of a client (its pools stay)",
            (("client", "client"),)),
    Command("forget", "forget", "drop a departed VM: session, pools, pages (not if connected)",
            (("client", "client"),)),
    Command("admit", "admit", "give a VM a socket of its own and print its path (connect the"
            " VM's virtio-serial channel there)", (VM,),
            options=(Option("owner", "user name or uid to give the socket file (QEMU's user)",
                            metavar="USER"),)),
    Command("dismiss", "dismiss", "stop listening for a VM (its pages stay until forget)",
            (VM,)),
    Command("share-allow", "share_allow", "let a VM create or join the shared pool of a uuid",
            (VM, UUID)),
    Command("share-deny", "share_deny", "take a VM's shared-pool authorisation back",
            (VM, UUID)),
    Command("shutdown", "shutdown", "ask the daemon to save its state and stop"),
)


def _pools(client: dict[str, Any]) -> str:
    return ", ".join(
        f"{p['pool_id']}:{p['kind'][:4]}{'/shared' if p.get('shared') else ''}({p['pages']})"
        for p in client.get("pools", [])
    ) or "-"


def _span(result: dict[str, Any], listed: str, total: str) -> str:
    """``clients 1-100 of 10000``: which entries of a listing this page holds."""
    shown = len(result[listed])
    first = result.get("offset", 0) + 1
    span = f"{first}-{first + shown - 1}" if shown else "none"
    return f"{listed} {span} of {result.get(total, shown)}"


def list_tables(result: dict[str, Any]) -> tuple[Table, Table | None]:
    """The clients (with their pools) and, if there are any, the connected sessions."""
    clients = new_table("id", "name", "pages", "zbytes", "quota", "frozen", "pools",
                        right=("id", "pages", "zbytes", "quota"))
    for client in result["clients"]:
        quota = client.get("quota_bytes")
        clients.add_row(str(client["client_id"]), str(client["name"]), str(client["pages"]),
                        str(client["zbytes"]), "-" if quota is None else str(quota),
                        "FROZEN" if client.get("frozen") else "-", _pools(client))
    sessions_list = result["sessions"]
    if not sessions_list:
        return clients, None
    keys = list(dict.fromkeys(key for session in sessions_list for key in session))
    sessions = new_table(*keys)
    for session in sessions_list:
        sessions.add_row(*("-" if session.get(k) is None else str(session.get(k)) for k in keys))
    return clients, sessions


def vms_table(result: dict[str, Any]) -> Table | None:
    """The operator's VM records (admissions, shared-pool authorisations), if there are any."""
    if not result.get("vms"):
        return None
    table = new_table("vm", "admitted", "owner", "socket", "shared uuids")
    for vm in result["vms"]:
        owner = vm.get("owner")
        table.add_row(str(vm["vm"]), "yes" if vm.get("admitted") else "-",
                      "-" if owner is None else str(owner), str(vm.get("socket") or "-"),
                      ", ".join(vm.get("shared_uuids", [])) or "-")
    return table


def format_list(result: dict[str, Any]) -> str:
    """``ctl list`` as plain text: each listing's span line, then its table."""
    clients, sessions = list_tables(result)
    parts = [_span(result, "clients", "total_clients"), table_text(clients),
             _span(result, "sessions", "total_sessions")]
    if sessions is not None:
        parts.append(table_text(sessions))
    vms = vms_table(result)
    if vms is not None:
        parts += [_span(result, "vms", "total_vms"), table_text(vms)]
    return "\n".join(parts)


def _print_list(result: dict[str, Any]) -> None:
    clients, sessions = list_tables(result)
    print(_span(result, "clients", "total_clients"))
    print_table(clients)
    print(_span(result, "sessions", "total_sessions"))
    if sessions is not None:
        print_table(sessions)
    vms = vms_table(result)
    if vms is not None:
        print(_span(result, "vms", "total_vms"))
        print_table(vms)


def _format_result(command: Command, result: Any) -> str:
    if command.op == "stats":
        return json.dumps(result, indent=2)
    if isinstance(result, dict):
        return " ".join(f"{k}={v}" for k, v in result.items())
    return str(result)


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        request: dict[str, Any] = {name: getattr(args, name) for name, _ in command.params}
        for option in command.options:
            if getattr(args, option.name) is not None:
                request[option.name] = getattr(args, option.name)
        with ControlClient(args.control, timeout=args.timeout) as control:
            result = control.call(command.op, **request)  # ControlError: exit 1
        if args.json:
            print(json.dumps(result, indent=2))
        elif command.op == "list":
            _print_list(result)
        elif command.op == "admit":
            print(result["socket"])  # what a script needs: sock=$(tmemd ctl admit vm1)
        else:
            print(_format_result(command, result))
        return 0

    return run


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("ctl", help="send a control request to a running tmemd",
                                   description="Send one control request to a running tmemd "
                                               "and print the answer.")
    parser.add_argument("--control", default=DEFAULT_CONTROL, metavar="PATH",
                        help="control socket")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for a reply")
    commands = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        types = dict(command.types)
        for name, help_text in command.params:
            sub.add_argument(name, type=types.get(name, str), help=help_text)
        for option in command.options:
            sub.add_argument(f"--{option.name}", type=option.type, metavar=option.metavar,
                             help=option.help)
        sub.set_defaults(func=_runner(command))
