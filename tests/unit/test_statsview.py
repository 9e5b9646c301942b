"""``tmemd stats`` against a real control server: printed once, and the live rendering."""

import copy
import io
import json

import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text
from test_control_support import SmallDaemon, control_server_in_thread, populated_store

from tmemd.cli import main
from tmemd.service.controlclient import ControlClient
from tmemd.tools.statsview import CHANGED_STYLE, format_plain, global_counters, render, watch


@pytest.fixture
def daemon() -> SmallDaemon:
    small = SmallDaemon(populated_store())
    yield small
    small.store.close()


def test_prints_once_without_a_terminal(
    daemon: SmallDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    with control_server_in_thread(daemon) as path:
        assert main(["stats", "--watch", "--control", path]) == 0  # no TTY: once
        text = capsys.readouterr().out
        assert main(["stats", "--json", "--control", path]) == 0
        raw = json.loads(capsys.readouterr().out)
    lines = text.splitlines()
    assert any(line.split() == ["curr_pers_pages", "8"] for line in lines)
    assert any(line.split() == ["latency.put.samples", "2"] for line in lines)  # 1 in 8 timed
    assert "client 1 vm1: pages=16" in text
    assert "client 2 vm2: pages=0" in text and "quota_bytes=1048576" in text
    assert raw["global"]["put_total"] == 16
    assert [c["name"] for c in raw["clients"]] == ["vm1", "vm2"]


def test_unreachable_daemon_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--control", "/nonexistent/control.sock"]) == 1
    assert "cannot connect" in capsys.readouterr().err


def styles_by_name(table: Table) -> dict[str, str]:
    """{name: style of its value cell} from the overview's name/value column pairs."""
    columns = [list(column.cells) for column in table.columns]
    found: dict[str, str] = {}
    for index in range(0, len(columns), 2):
        for name, value in zip(columns[index], columns[index + 1], strict=True):
            if name == "":  # padding of the last row
                continue
            assert isinstance(value, Text)
            found[str(name)] = str(value.style)
    return found


def test_changed_values_are_highlighted(daemon: SmallDaemon) -> None:
    first = {"global": daemon.store.stats(),
             "clients": [daemon.store.client_stats(c) for c in daemon.store.clients()]}
    second = copy.deepcopy(first)
    second["global"]["put_total"] += 3
    second["clients"][1]["pages"] = 5
    overview, clients = render(second, first).renderables
    assert isinstance(overview, Table) and isinstance(clients, Table)
    styles = styles_by_name(overview)
    assert styles["put_total"] == CHANGED_STYLE
    assert styles["get_total"] == ""
    assert len(styles) == len(global_counters(second["global"]))
    pages_column = next(c for c in clients.columns if c.header == "pages")
    assert [str(getattr(cell, "style", "")) for cell in pages_column.cells] == ["", CHANGED_STYLE]
    first_render = render(first, None).renderables[0]
    assert isinstance(first_render, Table)
    assert set(styles_by_name(first_render).values()) == {""}, "nothing is new on the first"


def test_watch_refreshes_a_live_display(daemon: SmallDaemon) -> None:
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=200, height=80)
    with control_server_in_thread(daemon) as path, ControlClient(path) as control:
        watch(control, console, interval=0.01, refreshes=2)
    text = output.getvalue()
    assert text.count("tmem store") >= 2
    assert "vm1" in text and "curr_pers_pages" in text


def test_plain_format_lists_every_global_figure(daemon: SmallDaemon) -> None:
    snapshot = {"global": daemon.store.stats(), "clients": []}
    assert len(format_plain(snapshot).splitlines()) == len(global_counters(snapshot["global"]))
