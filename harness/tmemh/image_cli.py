"""``tmemh image build|show|path|prune``: build the guest image, describe it, print its paths,
delete unused cache entries.

Errors propagate to :func:`tmemd.clikit.run` (through ``tmemh.cli``): an invalid option exits
2, a failed build step or a missing image 1, each as one line (a failed step adds the tail of
its command's output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tmemd.clikit import mib_arg
from tmemd.units import format_size
from tmemh.image.build import build_image, find_image
from tmemh.image.manifest import default_cache_dir
from tmemh.image.options import DEFAULT_DISK_MIB, ImageOptions
from tmemh.image.prune import prune_cache

PATH_FIELDS = ("directory", "kernel", "initramfs", "rootfs", "ssh_private_key", "ssh_public_key")


class _DeprecatedAlias(argparse.Action):
    """Stores like its new spelling, with a warning naming it."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str = "",
                 **kwargs: object) -> None:
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; "
              f"use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("image", help="guest images built from Debian packages",
                                   description="The guest image, built from Debian packages "
                                               "and cached by a hash of its inputs.")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help=f"image cache (default: $TMEMH_CACHE or {default_cache_dir()})")
    actions = parser.add_subparsers(dest="image_command", required=True, metavar="COMMAND")

    build = actions.add_parser("build", help="build the image unless it is cached")
    build.add_argument("--mirror", default=None, help="Debian mirror (default: the host's)")
    build.add_argument("--kernel-version", default=None,
                       help="e.g. 6.1.0-41-amd64 (default: what linux-image-amd64 depends on)")
    build.add_argument("--disk-size", dest="disk_size_mib", type=mib_arg, metavar="SIZE",
                       default=format_size(DEFAULT_DISK_MIB << 20),
                       help="virtual size of the root disk, e.g. 4G; a plain number is MiB")
    build.add_argument("--disk-size-mib", dest="disk_size_mib", type=int, metavar="MIB",
                       action=_DeprecatedAlias, replacement="--disk-size",
                       default=argparse.SUPPRESS, help="deprecated: --disk-size in MiB")
    build.set_defaults(func=_build)

    show = actions.add_parser("show", help="print the manifest of the current image as JSON")
    show.set_defaults(func=_show)

    prune = actions.add_parser("prune", help="delete cached images, stages and kernels that "
                               "the current inputs do not use (and no process has open)")
    prune.set_defaults(func=_prune)

    path = actions.add_parser("path", help="print one path of the current image")
    path.add_argument("what", nargs="?", default="directory", choices=PATH_FIELDS,
                      help="which path")
    path.set_defaults(func=_path)


def _progress(message: str) -> None:
    print(f"tmemh image: {message}", file=sys.stderr, flush=True)


def _build(args: argparse.Namespace) -> int:
    options = ImageOptions(mirror=args.mirror, kernel_version=args.kernel_version,
                           disk_size_mib=args.disk_size_mib)
    manifest = build_image(options, cache_dir=args.cache_dir, progress=_progress)
    print(manifest.directory)
    return 0


def _show(args: argparse.Namespace) -> int:
    manifest = find_image(args.cache_dir)
    data = manifest.to_json()
    data["directory"] = str(manifest.directory)
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


def _path(args: argparse.Namespace) -> int:
    print(getattr(find_image(args.cache_dir), args.what))
    return 0


def _prune(args: argparse.Namespace) -> int:
    for path in prune_cache(args.cache_dir or default_cache_dir()):
        print(f"removed {path}")
    return 0
