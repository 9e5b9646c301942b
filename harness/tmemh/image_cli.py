"""``tmemh image build|show|path|prune``: build the guest image, describe it, print its paths,
delete unused cache entries."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tmemh.image.build import build_image, find_image
from tmemh.image.errors import ImageError
from tmemh.image.manifest import ImageManifest, default_cache_dir
from tmemh.image.options import DEFAULT_DISK_MIB, ImageOptions
from tmemh.image.prune import prune_cache

PATH_FIELDS = ("directory", "kernel", "initramfs", "rootfs", "ssh_private_key", "ssh_public_key")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("image", help="guest images built from Debian packages")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"image cache (default: $TMEMH_CACHE or {default_cache_dir()})")
    actions = parser.add_subparsers(dest="image_command", required=True)

    build = actions.add_parser("build", help="build the image unless it is cached")
    build.add_argument("--mirror", default=None, help="Debian mirror (default: the host's)")
    build.add_argument("--kernel-version", default=None,
                       help="e.g. 6.1.0-41-amd64 (default: what linux-image-amd64 depends on)")
    build.add_argument("--disk-size-mib", type=int, default=DEFAULT_DISK_MIB,
                       help="virtual size of the root disk")
    build.set_defaults(func=_build)

    show = actions.add_parser("show", help="print the manifest of the current image as JSON")
    show.set_defaults(func=_show)

    prune = actions.add_parser("prune", help="delete cached images, stages and kernels that "
                               "the current inputs do not use (and no process has open)")
    prune.set_defaults(func=_prune)

    path = actions.add_parser("path", help="print one path of the current image")
    path.add_argument("what", nargs="?", default="directory", choices=PATH_FIELDS)
    path.set_defaults(func=_path)


def _progress(message: str) -> None:
    print(f"tmemh image: {message}", file=sys.stderr, flush=True)


def _build(args: argparse.Namespace) -> int:
    options = ImageOptions(mirror=args.mirror, kernel_version=args.kernel_version,
                           disk_size_mib=args.disk_size_mib)
    try:
        manifest = build_image(options, cache_dir=args.cache_dir, progress=_progress)
    except (ImageError, OSError) as exc:
        print(f"tmemh image build: {exc}", file=sys.stderr)
        return 1
    print(manifest.directory)
    return 0


def _current(args: argparse.Namespace) -> ImageManifest | None:
    try:
        return find_image(args.cache_dir)
    except ImageError as exc:
        print(f"tmemh image: {exc}", file=sys.stderr)
        return None


def _show(args: argparse.Namespace) -> int:
    manifest = _current(args)
    if manifest is None:
        return 1
    data = manifest.to_json()
    data["directory"] = str(manifest.directory)
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0


def _path(args: argparse.Namespace) -> int:
    manifest = _current(args)
    if manifest is None:
        return 1
    print(getattr(manifest, args.what))
    return 0


def _prune(args: argparse.Namespace) -> int:
    try:
        removed = prune_cache(args.cache_dir or default_cache_dir())
    except (ImageError, OSError) as exc:
        print(f"tmemh image prune: {exc}", file=sys.stderr)
        return 1
    for path in removed:
        print(f"removed {path}")
    return 0
