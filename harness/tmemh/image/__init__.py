"""Guest images built from Debian packages: a cache of kernel, initramfs and qcow2 root."""

from tmemh.image.errors import ImageBuildError, ImageError, ImageNotFound, InvalidImageOptions
from tmemh.image.manifest import ImageManifest, ManifestError, default_cache_dir

__all__ = [
    "ImageBuildError",
    "ImageError",
    "ImageManifest",
    "ImageNotFound",
    "InvalidImageOptions",
    "ManifestError",
    "default_cache_dir",
]
