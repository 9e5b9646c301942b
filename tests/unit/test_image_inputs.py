"""Cache keys of the image builder: every input counts, equal inputs give equal keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tmemh.image.inputs import image_inputs, image_key, key_of_inputs, stage_key
from tmemh.image.options import ResolvedOptions


@pytest.fixture
def options(tmp_path: Path) -> ResolvedOptions:
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "packages.txt").write_text("python3\nrsync\n")
    (recipe / "init-tmem.sh").write_text("#!/bin/sh\necho TMEM-GUEST-READY\n")
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__init__.py").write_text("")
    (agent / "cli.py").write_text("def main() -> int:\n    return 0\n")
    return ResolvedOptions(
        release="bookworm", mirror="http://deb.example.org/debian",
        packages=("python3", "rsync"), kernel_version="6.1.0-41-amd64",
        disk_size_mib=2048, hostname="tmem-guest", recipe_dir=recipe, agent_dir=agent)


def test_same_inputs_give_the_same_keys(options: ResolvedOptions) -> None:
    twin = dataclasses.replace(options)
    assert image_key(options) == image_key(twin)
    assert stage_key(options) == stage_key(twin)
    assert len(image_key(options)) == 16


@pytest.mark.parametrize("field, value", [
    ("release", "trixie"),
    ("mirror", "http://other.example.org/debian"),
    ("packages", ("python3", "rsync", "strace")),
])
def test_debootstrap_inputs_change_both_keys(options: ResolvedOptions, field: str,
                                             value: object) -> None:
    changed = dataclasses.replace(options, **{field: value})
    assert image_key(changed) != image_key(options)
    assert stage_key(changed) != stage_key(options)


@pytest.mark.parametrize("field, value", [
    ("kernel_version", "6.1.0-42-amd64"),
    ("disk_size_mib", 4096),
    ("hostname", "other-guest"),
])
def test_image_inputs_change_only_the_image_key(options: ResolvedOptions, field: str,
                                                value: object) -> None:
    changed = dataclasses.replace(options, **{field: value})
    assert image_key(changed) != image_key(options)
    assert stage_key(changed) == stage_key(options)


@pytest.mark.parametrize("edit", [
    lambda o: (o.recipe_dir / "init-tmem.sh").write_text("#!/bin/sh\necho changed\n"),
    lambda o: (o.recipe_dir / "sshd_config").write_text("UseDNS no\n"),
    lambda o: (o.recipe_dir / "init-tmem.sh").chmod(0o755),
    lambda o: (o.agent_dir / "cli.py").write_text("def main() -> int:\n    return 1\n"),
    lambda o: (o.agent_dir / "transport.py").write_text("X = 1\n"),
])
def test_file_changes_change_only_the_image_key(options: ResolvedOptions, edit) -> None:
    before_image, before_stage = image_key(options), stage_key(options)
    edit(options)
    assert image_key(options) != before_image
    assert stage_key(options) == before_stage


def test_bytecode_caches_do_not_count(options: ResolvedOptions) -> None:
    before = image_key(options)
    cache = options.agent_dir / "__pycache__"
    cache.mkdir()
    (cache / "cli.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert image_key(options) == before


def test_recipe_documentation_does_not_count(options: ResolvedOptions) -> None:
    before = image_key(options)
    (options.recipe_dir / "README.md").write_text("# notes\n")
    assert image_key(options) == before


def test_package_order_does_not_matter_for_the_stage(options: ResolvedOptions) -> None:
    reordered = dataclasses.replace(options, packages=("rsync", "python3"))
    assert stage_key(reordered) == stage_key(options)


def test_key_of_gathered_inputs_is_the_image_key(options: ResolvedOptions) -> None:
    inputs = image_inputs(options)
    assert key_of_inputs(inputs) == image_key(options)
    assert key_of_inputs(inputs | {"hostname": "other"}) != image_key(options)
