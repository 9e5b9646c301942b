import argparse
import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from tmemd.service.config import (
    OPTIONS,
    DaemonConfig,
    add_config_arguments,
    resolve_config,
)
from tmemd.store.errors import ConfigError
from tmemd.units import format_size, parse_size


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tmemd-test", exit_on_error=False)
    add_config_arguments(parser)
    return parser.parse_args(argv)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tmemd.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(4096, 4096), ("4096", 4096), ("256M", 256 << 20), ("1G", 1 << 30), ("64k", 64 << 10),
     ("2GiB", 2 << 30), ("0", 0)],
)
def test_sizes_accept_bytes_and_suffixes(raw: object, expected: int) -> None:
    assert parse_size(raw) == expected


@pytest.mark.parametrize("raw", ["", "12X", "1.5G", "-1", "M", True, 3.0, -5])
def test_bad_sizes_are_rejected(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_size(raw)


def test_format_size_is_exact() -> None:
    assert format_size(256 << 20) == "256M"
    assert format_size(3 << 30) == "3G"
    assert format_size(4097) == "4097"


def test_defaults_without_file_or_arguments() -> None:
    config = resolve_config(parse([]))
    assert config == DaemonConfig()
    assert config.memory_limit == 256 << 20
    assert config.codec == "lzo"
    assert config.metrics_port == 0
    assert config.source_of("codec") == "default"


def test_command_line_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, 'memory_limit = "1G"\ncodec = "zstd"\nmetrics_port = 9100\n')
    config = resolve_config(parse(["--config", path, "--codec", "lz4"]))
    assert config.codec == "lz4"  # command line over file
    assert config.source_of("codec") == "command line"
    assert config.memory_limit == 1 << 30  # file over default
    assert config.source_of("memory_limit") == f"file {path}"
    assert config.metrics_port == 9100
    assert config.max_persistent_zsize == 3584  # default
    assert config.source_of("max_persistent_zsize") == "default"


def test_every_option_has_one_cli_flag_and_help() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings}
    for spec in OPTIONS:
        assert spec.cli_flag in flags
        assert spec.help


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'memory_limt = "1G"\n')
    with pytest.raises(ConfigError, match=r"tmemd\.toml: unknown key 'memory_limt'"):
        resolve_config(parse(["--config", path]))


def test_config_key_is_not_allowed_inside_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'config = "/etc/other.toml"\n')
    with pytest.raises(ConfigError, match="unknown key 'config'"):
        resolve_config(parse(["--config", path]))


def test_bad_toml_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "memory_limit = = 3\n")
    with pytest.raises(ConfigError, match=r"tmemd\.toml: not valid TOML"):
        resolve_config(parse(["--config", path]))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_config(parse(["--config", str(tmp_path / "nope.toml")]))


@pytest.mark.parametrize(
    ("line", "key"),
    [('memory_limit = "lots"', "memory_limit"), ("memory_limit = 1000", "memory_limit"),
     ('codec = "brotli"', "codec"), ("metrics_port = 70000", "metrics_port"),
     ('metrics_port = "x"', "metrics_port"),
     ("max_persistent_zsize = 5000", "max_persistent_zsize"),
     ('log_level = "LOUD"', "log_level"), ('metrics_allow_remote = "yes"', "metrics_allow_remote"),
     ("socket = 3", "socket"), ("[socket]\nx = 1", "socket")],
)
def test_bad_values_name_key_and_file(tmp_path: Path, line: str, key: str) -> None:
    path = write(tmp_path, line + "\n")
    with pytest.raises(ConfigError, match=rf"tmemd\.toml: key '{key}'"):
        resolve_config(parse(["--config", path]))


def test_bad_command_line_value_is_an_argparse_error() -> None:
    with pytest.raises(argparse.ArgumentError, match="bad size 'huge'"):
        parse(["--memory-limit", "huge"])


def test_persistent_cap_above_memory_limit_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'persistent_cap = "512M"\n')
    with pytest.raises(ConfigError, match="persistent_cap 512M .* exceeds memory_limit 256M"):
        resolve_config(parse(["--config", path]))
    assert resolve_config(parse(["--config", path, "--memory-limit", "1G"])).persistent_cap == (
        512 << 20
    )


def test_non_loopback_metrics_host_needs_explicit_permission() -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        resolve_config(parse(["--metrics-host", "0.0.0.0"]))
    config = resolve_config(parse(["--metrics-host", "0.0.0.0", "--metrics-allow-remote"]))
    assert config.metrics_host == "0.0.0.0"
    for host in ("127.0.0.1", "127.8.0.1", "::1", "localhost"):
        assert resolve_config(parse(["--metrics-host", host])).metrics_host == host


def test_optional_sizes_accept_none(tmp_path: Path) -> None:
    path = write(tmp_path, 'persistent_cap = "64M"\ndefault_quota = "16M"\n')
    config = resolve_config(parse(["--config", path, "--persistent-cap", "none"]))
    assert config.persistent_cap is None
    assert config.default_quota == 16 << 20


def test_toml_dump_round_trips(tmp_path: Path) -> None:
    original = resolve_config(
        parse(["--memory-limit", "1G", "--codec", "zstd", "--default-quota", "32M",
               "--state-file", '/var/lib/tmemd/st"ate', "--log-level", "debug"])
    )
    dumped = original.to_toml()
    tomllib.loads(dumped)
    reloaded = resolve_config(parse(["--config", write(tmp_path, dumped)]))
    assert dataclasses.replace(reloaded, config=None) == original
    assert reloaded.log_level == "DEBUG"


def test_json_dump_and_describe() -> None:
    config = resolve_config(parse(["--memory-limit", "512M"]))
    assert json.loads(config.to_json())["memory_limit"] == 512 << 20
    text = config.describe()
    assert "memory_limit = 512M (536870912 bytes)  (command line)" in text
    assert "codec = lzo  (default)" in text
    assert len(text.splitlines()) == len(OPTIONS) + 1


def test_store_config_carries_the_store_options() -> None:
    config = resolve_config(parse(["--memory-limit", "64M", "--persistent-cap", "32M",
                                   "--codec", "lz4", "--max-persistent-zsize", "3000"]))
    store_config = config.store_config()
    assert store_config.memory_limit_bytes == 64 << 20
    assert store_config.persistent_cap_bytes == 32 << 20
    assert store_config.codec == "lz4"
    assert store_config.max_persistent_zsize == 3000


def test_tmemd_config_prints_the_effective_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tmemd.cli import main

    path = write(tmp_path, 'codec = "zstd"\n')
    assert main(["config", "--config", path, "--memory-limit", "1G"]) == 0
    dumped = tomllib.loads(capsys.readouterr().out)
    assert dumped["codec"] == "zstd" and dumped["memory_limit"] == 1 << 30
    assert main(["config", "--format", "json", "--metrics-port", "9100"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics_port"] == 9100
    assert main(["config", "--config", write(tmp_path, "bogus = 1\n")]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
