"""``tmemd serve`` start-up errors that need no daemon: the memory limit against the host's
memory, the arena's allocation failing, ``--discard-state`` without a state file; and the
``--help``/``tmemd config`` conventions of the options table."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tmemd.cli import main
from tmemd.clikit import CommandError, UsageError
from tmemd.service import serve
from tmemd.service.config import DaemonConfig

GIB = 1 << 30


def fake_meminfo(monkeypatch: pytest.MonkeyPatch, total: int, available: int) -> None:
    monkeypatch.setattr(serve, "_meminfo", lambda: {"MemTotal": total, "MemAvailable": available})


def test_meminfo_is_read_in_bytes() -> None:
    info = serve._meminfo()
    assert info["MemTotal"] >= info["MemAvailable"] > 1 << 20


def test_a_limit_beyond_the_host_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_meminfo(monkeypatch, 8 * GIB, 4 * GIB)
    with pytest.raises(UsageError, match=r"memory_limit 16G \(default\) is larger than this"
                       r" host's memory \(MemAvailable 4\.0 GiB of MemTotal 8\.0 GiB\)"):
        serve.check_host_memory(DaemonConfig(memory_limit=16 * GIB))


def test_a_limit_beyond_what_is_free_now_is_a_runtime_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_meminfo(monkeypatch, 8 * GIB, 4 * GIB)
    with pytest.raises(CommandError, match="more than this host has available now") as info:
        serve.check_host_memory(DaemonConfig(memory_limit=6 * GIB))
    assert not isinstance(info.value, UsageError)
    serve.check_host_memory(DaemonConfig(memory_limit=2 * GIB))


def test_the_arena_failing_to_map_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args: object) -> None:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(serve, "TmemStore", no_memory)
    with pytest.raises(CommandError, match=r"cannot allocate memory_limit 256M: Cannot allocate"
                       r" memory \(MemAvailable [\d.]+ GiB of MemTotal [\d.]+ GiB\)"):
        serve._new_daemon(DaemonConfig(), None)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Errno" not in err
    return lines[0]


def test_serve_with_an_impossible_limit_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--socket", str(tmp_path / "s"), "--control", str(tmp_path / "c"),
                 "--memory-limit", "64T"])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("tmemd: error: memory_limit 64T (command line) is larger than")
    assert "MemTotal" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_discard_state_needs_a_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--socket", str(tmp_path / "s"), "--control", str(tmp_path / "c"),
                 "--discard-state"])
    assert code == 2
    assert "discard_state (command line) needs a state_file" in one_error_line(
        capsys.readouterr().err)


def test_help_says_nothing_about_unset_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("serve", "config"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "(default: None)" not in text and "None" not in text
        assert "--discard-state" in text and "(default: 256M" in text


def test_config_errors_are_one_usage_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("bogus = 1\n")
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tmemd: error: config: config file ") and "unknown key" in err
