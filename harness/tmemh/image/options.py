"""What an image is built from: release, mirror, packages, kernel, recipe and agent sources.

``ImageOptions`` holds what a caller may choose; ``resolve_options`` fills in the defaults
from the host (the Debian mirror of its apt sources, the current bookworm kernel) and checks
every value before anything is built.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tmemh.image.errors import InvalidImageOptions
from tmemh.image.kernel import current_kernel_version

log = logging.getLogger(__name__)

DEFAULT_RELEASE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_DISK_MIB = 2048
DEFAULT_HOSTNAME = "tmem-guest"
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def installed_package_dir(name: str) -> Path:
    """The folder holding an installed package's files, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not an installed package")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


# Both come from the installed packages, so a wheel install builds images as a source tree
# does: the recipe is the data package tmemh.recipe (in a source tree, harness/tmemh/recipe
# links to the top-level images/), the agent is the tmem_agent package the guest gets a copy of.
DEFAULT_RECIPE_DIR = installed_package_dir("tmemh.recipe")
DEFAULT_AGENT_DIR = installed_package_dir("tmem_agent")

_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_RELEASE_NAME = re.compile(r"^[a-z]+$")
_KERNEL_VERSION = re.compile(r"^\d+\.\d+\.\d+-\d+-[a-z0-9]+$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MIN_DISK_MIB = 512
KERNEL_VERSION_MEMO = "kernel-version.json"


@dataclass(frozen=True)
class ImageOptions:
    """Choices for one image; None means "the default, found on the host"."""

    release: str = DEFAULT_RELEASE
    mirror: str | None = None
    packages: tuple[str, ...] | None = None  # None: the recipe's packages.txt
    kernel_version: str | None = None  # None: what linux-image-amd64 depends on
    disk_size_mib: int = DEFAULT_DISK_MIB
    hostname: str = DEFAULT_HOSTNAME
    recipe_dir: Path = DEFAULT_RECIPE_DIR
    agent_dir: Path = DEFAULT_AGENT_DIR


@dataclass(frozen=True)
class ResolvedOptions:
    """Every input of a build, with defaults filled in and checked."""

    release: str
    mirror: str
    packages: tuple[str, ...]
    kernel_version: str
    disk_size_mib: int
    hostname: str
    recipe_dir: Path
    agent_dir: Path


def read_list_file(path: Path) -> tuple[str, ...]:
    """The non-empty lines of a recipe list file, without '#' comments."""
    items = []
    for line in path.read_text().splitlines():
        item = line.split("#", 1)[0].strip()
        if item:
            items.append(item)
    return tuple(items)


def _mirror_uris(text: str) -> list[str]:
    """Mirror URIs in apt sources: deb822 ``URIs:`` fields and one-line ``deb URI ...`` entries."""
    uris = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["URIs:"]:
            uris += words[1:]
        elif words[:1] == ["deb"]:
            uris += [w for w in words[1:] if "://" in w][:1]
    return uris


def host_mirror(sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The first Debian (non-security) mirror in the host's apt sources, or the default mirror."""
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in _mirror_uris(text):
            if "security" not in uri:
                return uri.rstrip("/")
    log.info("no Debian mirror in %s; using %s", [str(p) for p in sources], DEFAULT_MIRROR)
    return DEFAULT_MIRROR


def resolve_options(options: ImageOptions | None = None,
                    cache_dir: Path | None = None) -> ResolvedOptions:
    """Fill in defaults and check every value; raises InvalidImageOptions on bad input.

    ``cache_dir``, when it exists, remembers the kernel version found through apt.
    """
    options = options or ImageOptions()
    if not _RELEASE_NAME.match(options.release):
        raise InvalidImageOptions(f"invalid release name {options.release!r}")
    recipe_dir = Path(options.recipe_dir).resolve()
    if not (recipe_dir / "packages.txt").is_file():
        raise InvalidImageOptions(f"{recipe_dir} is not an image recipe (no packages.txt)")
    agent_dir = Path(options.agent_dir).resolve()
    if not (agent_dir / "__init__.py").is_file():
        raise InvalidImageOptions(f"{agent_dir} is not the tmem_agent package (no __init__.py)")
    packages = options.packages
    if packages is None:
        packages = read_list_file(recipe_dir / "packages.txt")
    bad = [p for p in packages if not _PACKAGE_NAME.match(p)]
    if bad or not packages:
        raise InvalidImageOptions(f"invalid package names: {bad or 'empty list'}")
    if options.disk_size_mib < MIN_DISK_MIB:
        raise InvalidImageOptions(f"disk size {options.disk_size_mib} MiB < {MIN_DISK_MIB} MiB")
    if not _HOSTNAME.match(options.hostname):
        raise InvalidImageOptions(f"invalid host name {options.hostname!r}")
    mirror = options.mirror or host_mirror()
    if not re.match(r"^(https?|file)://\S+$", mirror):
        raise InvalidImageOptions(f"invalid mirror URL {mirror!r}")
    memo = cache_dir / KERNEL_VERSION_MEMO if cache_dir is not None else None
    kernel_version = options.kernel_version or current_kernel_version(memo)
    if not _KERNEL_VERSION.match(kernel_version):
        raise InvalidImageOptions(f"invalid kernel version {kernel_version!r}")
    return ResolvedOptions(
        release=options.release,
        mirror=mirror.rstrip("/"),
        packages=tuple(sorted(set(packages))),
        kernel_version=kernel_version,
        disk_size_mib=options.disk_size_mib,
        hostname=options.hostname,
        recipe_dir=recipe_dir,
        agent_dir=agent_dir,
    )
