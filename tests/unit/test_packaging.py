"""Packaging: what a wheel install gets, and what a daemon-only host needs.

- The wheel carries the guest image recipe (``images/``, as the data package ``tmemh.recipe``)
  and every source file of the guest agent, and an install finds both there: the image inputs
  hash the same as in the source tree, so both kinds of install share cached images.
- The harness's dependencies are an extra: ``tmemd`` runs (and ``tmem-agent`` too, standard
  library only) when they are not installed. Pre-1.0 dependencies have an upper bound.

The wheel is built from a copy of the source tree without build isolation (no network; the dev
extra brings a recent setuptools) and unpacked into a folder a fresh interpreter imports from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tmemh.image.inputs import tree_digest
from tmemh.image.options import DEFAULT_AGENT_DIR, DEFAULT_RECIPE_DIR

TOP = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "images", "host-daemon", "guest-agent", "harness")
RECIPE_FILES = {"packages.txt", "initramfs-modules.txt", "initramfs-init.sh", "init-tmem.sh",
                "tmem-agent.sh", "sshd_config", "modules-exclude.txt", "README.md"}
HARNESS_ONLY = ("jinja2", "paramiko", "fabric", "invoke", "qemu", "libvirt")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the source tree: what the wheel is built from and compared with."""
    source = tmp_path_factory.mktemp("wheel") / "source"
    source.mkdir()
    litter = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".mypy_cache")
    for name in SOURCES:
        if (TOP / name).is_dir():
            shutil.copytree(TOP / name, source / name, symlinks=True, ignore=litter)
        else:
            shutil.copy2(TOP / name, source / name)
    return source


@pytest.fixture(scope="module")
def wheel(source: Path) -> Path:
    work = source.parent
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (work / "dist").glob("tmem_harness-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """The wheel's files unpacked as an install puts them into site-packages."""
    site = wheel.parent.parent / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def python_in(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports the project from ``site`` first."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


def test_the_source_tree_finds_recipe_and_agent_in_its_packages() -> None:
    assert DEFAULT_RECIPE_DIR == TOP / "images"  # through the link harness/tmemh/recipe
    assert DEFAULT_AGENT_DIR == TOP / "guest-agent" / "tmem_agent"
    assert {p.name for p in DEFAULT_RECIPE_DIR.iterdir() if p.is_file()} >= RECIPE_FILES


def test_wheel_ships_the_recipe(source: Path, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name.removeprefix("tmemh/recipe/"): archive.read(name)
                   for name in archive.namelist() if name.startswith("tmemh/recipe/")}
    recipe = {p.name: p.read_bytes() for p in (source / "images").iterdir() if p.is_file()}
    assert set(recipe) >= RECIPE_FILES
    assert shipped == recipe


def test_wheel_ships_every_agent_module(source: Path, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    agent_dir = source / "guest-agent" / "tmem_agent"
    agent = {"tmem_agent/" + p.relative_to(agent_dir).as_posix() for p in agent_dir.rglob("*.py")}
    assert "tmem_agent/channel/wire.py" in agent
    assert agent <= names


def test_an_install_finds_recipe_and_agent_in_its_packages(source: Path, installed: Path,
                                                           tmp_path: Path) -> None:
    done = python_in(installed, """
        import json
        from tmemh.image.inputs import BUILDER_DIR, tree_digest
        from tmemh.image.options import DEFAULT_AGENT_DIR, DEFAULT_RECIPE_DIR
        print(json.dumps({
            "recipe_dir": str(DEFAULT_RECIPE_DIR), "agent_dir": str(DEFAULT_AGENT_DIR),
            "builder_dir": str(BUILDER_DIR),
            "recipe": tree_digest(DEFAULT_RECIPE_DIR, skipped_suffixes=(".md", ".pyc")),
            "agent": tree_digest(DEFAULT_AGENT_DIR, (".py",)),
            "builder": tree_digest(BUILDER_DIR, (".py",)),
        }))
    """, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    site = installed.resolve()
    assert Path(found["recipe_dir"]) == site / "tmemh" / "recipe"
    assert Path(found["agent_dir"]) == site / "tmem_agent"
    assert Path(found["builder_dir"]) == site / "tmemh" / "image"
    # The same inputs as the source tree's, so the same image key and cache entry.
    assert found["recipe"] == tree_digest(source / "images", skipped_suffixes=(".md", ".pyc"))
    assert found["agent"] == tree_digest(source / "guest-agent" / "tmem_agent", (".py",))
    assert found["builder"] == tree_digest(source / "harness" / "tmemh" / "image", (".py",))


def test_harness_dependencies_are_an_extra_and_pre_1_0_ones_are_bounded(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(meta).decode())
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    base = {r.name for r in requires if r.marker is None}
    harness = {r.name for r in requires
               if r.marker is not None and r.marker.evaluate({"extra": "harness"})}
    assert base == {"python-lzo", "lz4", "zstandard", "rich", "prometheus-client"}
    assert harness == {"jinja2", "paramiko", "fabric", "qemu.qmp"}
    assert {"harness", "libvirt", "dev"} <= set(metadata.get_all("Provides-Extra") or [])
    for r in requires:
        if r.name in ("qemu.qmp", "zstandard", "prometheus-client"):
            assert any(s.operator == "<" for s in r.specifier), r


def run_without(blocked: tuple[str, ...], code: str, cwd: Path) -> None:
    """Run ``code`` in a fresh interpreter in which the ``blocked`` packages cannot be imported,
    as if they were not installed; it fails if ``code`` imports any of them."""
    prologue = f"""
import importlib.abc, sys
BLOCKED = {blocked!r}
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Absent())
BEFORE = set(sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["config"], ["ctl", "--help"],
                                  ["stats", "--help"], ["bench", "--help"],
                                  ["loadgen", "--help"]])
def test_tmemd_runs_without_the_harness_dependencies(argv: list[str], tmp_path: Path) -> None:
    run_without(HARNESS_ONLY, f"""
        from tmemd.cli import main
        try:
            code = main({argv!r})
        except SystemExit as exit:
            code = exit.code
        assert code == 0, code
    """, cwd=tmp_path)


def test_tmem_agent_needs_only_the_standard_library(tmp_path: Path) -> None:
    run_without(HARNESS_ONLY + ("tmemd", "tmemh", "rich", "lzo", "lz4", "zstandard"), """
        from tmem_agent.cli import main
        for argv in (["--help"], ["pagecheck", "--help"], ["ports", "--help"]):
            try:
                main(argv)
            except SystemExit as exit:
                assert exit.code == 0, (argv, exit.code)
        third_party = sorted(m for m in set(sys.modules) - BEFORE
                             if m.split(".")[0] not in sys.stdlib_module_names | {"tmem_agent"})
        assert not third_party, third_party
    """, cwd=tmp_path)
