"""The ``tmem-agent`` command line, run here (it is standard library only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tmem_agent import cli
from tmem_agent.channel import ports
from tmem_agent.tools import pagecheck


def test_ports_lists_sysfs_virtio_ports(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for port, name in (("vport1p1", "org.tmem.0"), ("vport1p2", "org.qemu.guest_agent.0")):
        (tmp_path / port).mkdir()
        (tmp_path / port / "name").write_text(name + "\n")
    monkeypatch.setattr(ports, "SYSFS_PORTS", str(tmp_path / "*"))
    assert ports.virtio_ports() == [("/dev/vport1p1", "org.tmem.0"),
                                    ("/dev/vport1p2", "org.qemu.guest_agent.0")]
    assert ports.find_port("org.tmem.0") == "/dev/vport1p1"
    assert ports.find_port("missing") is None


def agent(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmem_agent.cli", *argv],
                          capture_output=True, text=True, timeout=60)


def test_pagecheck_arguments_are_passed_through_and_checked() -> None:
    done = agent("pagecheck", "--batch", "999")
    assert done.returncode == 2 and "batch" in done.stderr


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["ports", "extra"], ["--bogus", "ports"]])
def test_usage_errors_exit_2_in_one_line(argv: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tmem-agent: error: ") and err.count("\n") == 1


def test_runtime_failures_exit_1_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path,  # type: ignore[no-untyped-def]
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ports, "SYSFS_PORTS", str(tmp_path / "*"))
    assert cli.main(["ports"]) == 1
    assert capsys.readouterr().err == "tmem-agent: error: no virtio-serial ports in this guest\n"
    monkeypatch.setattr(pagecheck, "guest_pages", lambda count: iter([bytes(4096)] * count))
    assert cli.main(["pagecheck", "--port", "org.absent", "--pages", "1"]) == 1
    err = capsys.readouterr().err
    assert err == "tmem-agent: error: no virtio-serial port named 'org.absent'\n"


def test_a_bug_is_one_line_and_a_traceback_only_with_verbose(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> list[tuple[str, str]]:
        raise KeyError("boom")

    monkeypatch.setattr(cli, "virtio_ports", broken)
    assert cli.main(["ports"]) == 1
    err = capsys.readouterr().err
    assert err == "tmem-agent: error: KeyError: 'boom' (-v shows the traceback)\n"
    assert cli.main(["-v", "ports"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("tmem-agent: error: KeyError: 'boom'\n")


def test_help_shows_defaults() -> None:
    done = agent("--help")
    assert done.returncode == 0 and "exit status" in done.stdout
    parser = cli.CliParser(prog="x")
    parser.add_argument("--window", type=int, default=4, help="batches in flight")
    parser.add_argument("--port", default="org.tmem.check")
    text = parser.format_help()
    assert "batches in flight (default: 4)" in text and "(default: org.tmem.check)" in text
