"""Dedup is one option of the daemon's table: ``--dedup`` on the command line, ``dedup`` in the
TOML file, off by default (the store's own default); the resolved value is printed and saved
like every other option, and reaches the store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tmemd.cli import main
from tmemd.service.config import OPTIONS, DaemonConfig, add_config_arguments, resolve_config
from tmemd.store.errors import ConfigError
from tmemd.store.storeconfig import StoreConfig
from tmemd.store.tmem import TmemStore


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return p


def test_dedup_is_off_by_default_everywhere() -> None:
    assert DaemonConfig().dedup is False is StoreConfig().dedup
    assert [spec.default for spec in OPTIONS if spec.name == "dedup"] == [False]
    config = resolve_config(parser().parse_args([]))
    assert config.store_config().dedup is False and config.source_of("dedup") == "default"
    assert "dedup = false" in config.to_toml()


def test_dedup_from_the_command_line_and_from_the_file(tmp_path: Path) -> None:
    config = resolve_config(parser().parse_args(["--dedup"]))
    assert config.dedup is True and config.source_of("dedup") == "command line"
    path = tmp_path / "tmemd.toml"
    path.write_text("dedup = true\n")
    config = resolve_config(parser().parse_args(["--config", str(path)]))
    assert config.store_config().dedup is True
    assert config.source_of("dedup") == f"file {path}"
    assert "dedup = true" in config.to_toml() and "dedup = True" in config.describe()
    assert json.loads(config.to_json())["dedup"] is True
    store = TmemStore(config.store_config())
    try:
        assert store.stats()["dedup"] is True
    finally:
        store.close()


def test_dedup_in_the_file_must_be_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "tmemd.toml"
    path.write_text('dedup = "yes"\n')
    with pytest.raises(ConfigError, match="dedup"):
        resolve_config(parser().parse_args(["--config", str(path)]))


def test_tmemd_config_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--format", "json", "--dedup"]) == 0
    assert json.loads(capsys.readouterr().out)["dedup"] is True
