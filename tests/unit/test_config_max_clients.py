"""The store's client bound is one option of the daemon's table: ``--max-clients`` on the
command line, ``max_clients`` in the TOML file, the store's own default."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tmemd.service.config import DaemonConfig, add_config_arguments, resolve_config
from tmemd.store.storeconfig import StoreConfig


def test_max_clients_is_an_option_on_the_command_line_and_in_the_config_file(
    tmp_path: Path,
) -> None:
    assert DaemonConfig().max_clients == StoreConfig().max_clients == 1024
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    config = resolve_config(parser.parse_args(["--max-clients", "7"]))
    assert config.store_config().max_clients == 7
    path = tmp_path / "tmemd.toml"
    path.write_text("max_clients = 9\n")
    assert resolve_config(parser.parse_args(["--config", str(path)])).max_clients == 9
    assert "max_clients = 9" in resolve_config(parser.parse_args(["--config", str(path)])).to_toml()
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-clients", "0"])
