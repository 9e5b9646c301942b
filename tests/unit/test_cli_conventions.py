"""The command-line conventions shared by ``tmemd`` and ``tmemh`` (``tmemd.clikit``).

Exit 0 on success, 1 on a runtime failure, 2 on a usage error, 130 when interrupted; every
error one line on stderr (``PROG: error: ...``), a traceback only with ``-v``; ``--help``
shows defaults; sizes take units; tables stay greppable without a terminal.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.table import Table

from tmemd import clikit
from tmemd.cli import main as tmemd_main
from tmemh.cli import main as tmemh_main


def command(module: str, *argv: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_error_line(stderr: str, prog: str) -> str:
    """The error line, after any log lines; fails if it is not the last and only error."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and stderr.endswith(errors[0] + "\n"), stderr
    return errors[0]


# ----- in subprocesses, as a user runs them ------------------------------------------------------
def test_tmemh_bad_accelerator_variable_is_a_usage_error(tmp_path: Path) -> None:
    done = command("tmemh.cli", "vm", "--state-dir", str(tmp_path / "state"), "up", "x",
                   env={"TMEMH_ACCEL": "bogus"})
    assert done.returncode == 2
    assert "TMEMH_ACCEL must be 'kvm' or 'tcg'" in one_error_line(done.stderr, "tmemh")
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "state").exists()


def test_tmemh_bad_size_is_a_usage_error() -> None:
    done = command("tmemh.cli", "vm", "up", "x", "--memory", "1X")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "argument --memory: bad size '1X'" in one_error_line(done.stderr, "tmemh")


def test_tmemd_ctl_without_a_daemon_is_a_runtime_failure() -> None:
    done = command("tmemd.cli", "ctl", "--control", "/nonexistent", "list")
    assert done.returncode == 1 and done.stdout == ""
    assert "cannot connect to control socket /nonexistent" in one_error_line(done.stderr, "tmemd")


def test_tmemd_serve_on_a_regular_file_is_a_runtime_failure(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    done = command("tmemd.cli", "serve", "--socket", str(plain),
                   "--control", str(tmp_path / "c.sock"))
    assert done.returncode == 1
    assert "is not a socket" in one_error_line(done.stderr, "tmemd")
    assert plain.read_text() == "keep me"


def test_tmemd_serve_where_no_socket_can_be_made_is_a_runtime_failure(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a directory")
    done = command("tmemd.cli", "serve", "--socket", str(tmp_path / "s.sock"),
                   "--control", str(tmp_path / "plain" / "c.sock"))
    assert done.returncode == 1
    line = one_error_line(done.stderr, "tmemd")
    assert str(tmp_path / "plain") in line and "[Errno" not in line


def test_tmemd_serve_with_a_bad_value_is_a_usage_error(tmp_path: Path) -> None:
    done = command("tmemd.cli", "serve", "--socket", str(tmp_path / "s.sock"),
                   "--control", str(tmp_path / "c.sock"), "--memory-limit", "lots")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--memory-limit: bad size 'lots'" in one_error_line(done.stderr, "tmemd")
    config = tmp_path / "bad.toml"
    config.write_text("bogus = 1\n")
    done = command("tmemd.cli", "serve", "--config", str(config))
    assert done.returncode == 2 and "unknown key 'bogus'" in one_error_line(done.stderr, "tmemd")


# ----- help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("main", "argv", "shown"), [
    (tmemh_main, ["vm", "up", "--help"], "(default: 512M)"),
    (tmemh_main, ["image", "build", "--help"], "(default: 2G)"),
    (tmemh_main, ["demo", "--help"], "(default: 8192)"),
    (tmemd_main, ["ctl", "--help"], "(default: /run/tmemd/control.sock)"),
    (tmemd_main, ["stats", "--help"], "(default: 1.0)"),
])
def test_help_shows_defaults_once(main, argv: list[str], shown: str,  # type: ignore[no-untyped-def]
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the help's line wrapping
    assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: the image's)" in text or "up" not in argv
    assert text.count("(default: 512M)") <= 1


def test_help_formatter_shows_defaults_without_help_text_and_never_twice() -> None:
    parser = clikit.CliParser(prog="x")
    parser.add_argument("--plain", default=3)
    parser.add_argument("--said", default=4, help="said already (default: four)")
    parser.add_argument("--flag", action="store_true", help="a flag")
    parser.add_argument("--maybe", default=None, help="nothing to show")
    text = parser.format_help()
    assert "(default: 3)" in text and "(default: four)" in text and "(default: 4)" not in text
    assert "(default: False)" not in text and "(default: None)" not in text


# ----- sizes --------------------------------------------------------------------------------------
def test_size_arguments() -> None:
    assert clikit.size_arg("20M") == 20 << 20 and clikit.size_arg("4096") == 4096
    assert clikit.size_or_none_arg("none") is None and clikit.size_or_none_arg("1K") == 1024
    assert clikit.mib_arg("512") == 512 and clikit.mib_arg("1G") == 1024
    assert clikit.mib_arg("1048576B") == 1
    for bad in ("1X", "-1", "", "1.5G"):
        with pytest.raises(argparse.ArgumentTypeError):
            clikit.mib_arg(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="whole number of MiB"):
        clikit.mib_arg("1536K")


# ----- the run() wrapper --------------------------------------------------------------------------
class Oops(Exception):
    pass


def runner(raised: BaseException) -> argparse.ArgumentParser:
    parser = clikit.CliParser(prog="prog")
    clikit.add_verbose(parser)

    def fail(args: argparse.Namespace) -> int:
        raise raised

    parser.set_defaults(func=fail)
    return parser


@pytest.mark.parametrize(("raised", "code", "line"), [
    (clikit.UsageError("bad value"), 2, "prog: error: bad value"),
    (clikit.CommandError("it broke"), 1, "prog: error: it broke"),
    (Oops("a domain failure"), 1, "prog: error: a domain failure"),
    (FileNotFoundError(2, "No such file or directory", "/x"), 1,
     "prog: error: /x: No such file or directory"),
    (KeyError("k"), 1, "prog: error: KeyError: 'k' (-v shows the traceback)"),
    (KeyboardInterrupt(), 130, "prog: interrupted"),
])
def test_run_maps_exceptions_to_exit_codes_and_one_line(
        raised: BaseException, code: int, line: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert clikit.run(runner(raised), [], failures=(Oops,)) == code
    assert capsys.readouterr().err == line + "\n"


def test_domain_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert clikit.run(runner(Oops("bad")), [], usage_errors=(Oops,)) == 2
    assert capsys.readouterr().err == "prog: error: bad\n"


def test_verbose_adds_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert clikit.run(runner(KeyError("k")), ["-v"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("prog: error: KeyError: 'k'\n")


def test_a_multi_line_detail_follows_the_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tmemh.vm.errors import VMLaunchFailure

    failure = VMLaunchFailure("the VM stopped while booting",
                              ["qemu-system-x86_64", "-append", "console=ttyS0 panic=-1"], 1,
                              "Kernel panic - not syncing: boom")
    assert clikit.run(runner(failure), [], failures=(VMLaunchFailure,)) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "prog: error: VM launch failed: the VM stopped while booting"
    assert "command: qemu-system-x86_64 -append 'console=ttyS0 panic=-1'" in lines
    assert lines[-1] == "Kernel panic - not syncing: boom"


# ----- tables -------------------------------------------------------------------------------------
def test_tables_are_plain_greppable_columns_off_a_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    table = clikit.new_table("NAME", "SSH", "WHERE", right=("SSH",))
    table.add_row("vm-one", "2222", "pid 17 " + "x" * 150)  # wider than any terminal
    table.add_row("b", "22", "-")
    clikit.print_table(table)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["NAME", "SSH"], ["vm-one", "2222"],
                                                   ["b", "22"]]
    assert all(line == line.rstrip() for line in lines)
    assert lines[1].index("2222") + 4 == lines[2].index("22") + 2  # right-aligned
    assert isinstance(table, Table)
