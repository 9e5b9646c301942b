"""``tmemd stats``: the store's counters in the terminal, live or once.

With ``--watch`` on a terminal the counters refresh every ``--interval`` seconds in a rich
Live table, and values that changed since the last refresh are highlighted, as ``watch -d``
did over zcache's sysfs statistics. Without a terminal or without ``--watch`` the counters are
printed once, as plain ``name value`` lines or, with ``--json``, as the raw JSON snapshot.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..clikit import UsageError, table_text
from ..service.config import DEFAULT_CONTROL
from ..service.controlclient import ControlClient

log = logging.getLogger(__name__)

CHANGED_STYLE = "bold reverse"
CLIENT_COLUMNS = ("pages", "zbytes", "puts", "failed_puts", "gets", "get_hits", "flushes",
                  "evicted_pages", "quota_bytes", "frozen")
LATENCY_FIELDS = ("samples", "mean_ns", "p50_ns", "p99_ns")


def global_counters(stats: dict[str, Any]) -> dict[str, Any]:
    """The scalar global figures, plus each operation's latency summary, in display order."""
    flat: dict[str, Any] = {}
    for key, value in stats.items():
        if key == "latency_ns":
            for op, histogram in value.items():
                for field in LATENCY_FIELDS:
                    flat[f"latency.{op}.{field}"] = histogram.get(field)
        elif isinstance(value, list):
            flat[key] = " ".join(f"{i}:{n}" for i, n in enumerate(value) if n) or "-"
        elif not isinstance(value, dict):
            flat[key] = value
    return flat


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_plain(snapshot: dict[str, Any]) -> str:
    """Plain text: one ``name value`` line per global figure, then one line per client."""
    counters = global_counters(snapshot["global"])
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column()
    table.add_column()
    for name, value in counters.items():
        table.add_row(name, _show(value))
    lines = table_text(table).splitlines() if counters else []
    for client in snapshot["clients"]:
        fields = " ".join(f"{key}={_show(client.get(key))}" for key in CLIENT_COLUMNS)
        lines.append(f"client {client['client_id']} {client['name']}: {fields}")
    return "\n".join(lines)


def _cell(value: Any, previous: Any, compare: bool) -> Text:
    changed = compare and value != previous
    return Text(_show(value), style=CHANGED_STYLE if changed else "")


def _chunks(items: list[tuple[str, Any]], columns: int) -> Iterator[list[tuple[str, Any]]]:
    rows = -(-len(items) // columns)
    for row in range(rows):
        yield items[row::rows]


def render(
    snapshot: dict[str, Any], previous: dict[str, Any] | None, columns: int = 3
) -> Group:
    """Global figures in ``columns`` name/value column pairs and a per-client table; values
    that differ from ``previous`` are highlighted."""
    counters = global_counters(snapshot["global"])
    before = global_counters(previous["global"]) if previous else {}
    overview = Table(title="tmem store", show_header=False, box=None, padding=(0, 1))
    for _ in range(columns):
        overview.add_column(style="cyan")
        overview.add_column(justify="right")
    for row in _chunks(list(counters.items()), columns):
        cells: list[Text | str] = []
        for name, value in row:
            cells += [name, _cell(value, before.get(name), previous is not None)]
        overview.add_row(*cells)

    earlier = {c["client_id"]: c for c in previous["clients"]} if previous else {}
    clients = Table(title="clients")
    clients.add_column("id", justify="right")
    clients.add_column("name")
    for key in CLIENT_COLUMNS:
        clients.add_column(key, justify="right")
    for client in snapshot["clients"]:
        old = earlier.get(client["client_id"])
        clients.add_row(
            str(client["client_id"]), str(client["name"]),
            *(_cell(client.get(k), old.get(k) if old else None, old is not None)
              for k in CLIENT_COLUMNS),
        )
    return Group(overview, clients)


def watch(
    control: ControlClient, console: Console, interval: float, refreshes: int | None = None
) -> None:
    """Refresh the display every ``interval`` s; forever, or ``refreshes`` times."""
    previous: dict[str, Any] | None = None
    count = 0
    with Live(console=console, auto_refresh=False) as live:
        while refreshes is None or count < refreshes:
            snapshot = control.call("stats")
            live.update(render(snapshot, previous), refresh=True)
            previous = snapshot
            count += 1
            if refreshes is None or count < refreshes:
                time.sleep(interval)


def run(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    console = Console()
    try:
        with ControlClient(args.control) as control:  # ControlError: exit 1
            if args.watch and not args.json and console.is_terminal:
                watch(control, console, args.interval)
                return 0
            snapshot = control.call("stats")
    except KeyboardInterrupt:  # how --watch ends
        return 0
    print(json.dumps(snapshot, indent=2) if args.json else format_plain(snapshot))
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("stats", help="show a running tmemd's counters",
                                   description="The store's counters, once or (--watch) live.")
    parser.add_argument("--control", default=DEFAULT_CONTROL, metavar="PATH",
                        help="control socket")
    parser.add_argument("--watch", action="store_true",
                        help="refresh on a terminal, highlighting changes (like watch -d)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between refreshes")
    parser.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    parser.set_defaults(func=run)
