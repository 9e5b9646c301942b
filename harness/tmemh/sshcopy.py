"""Copying files and directory trees to and from a guest over SFTP, the way ``scp -r`` does.

A source is copied *into* the destination when that is an existing directory, else *to* it
(which then needs a single source). Directories are copied recursively and merged into
directories that exist; regular files are overwritten. File and directory permission bits
are kept (a directory's after its contents are in, so a read-only one can still be filled).
Symbolic links are followed, as scp does; a directory reached twice (a link loop) is
skipped, and so are sockets, FIFOs and devices, each with a warning.

Guest paths may start with ``~/`` (the login directory, where SFTP starts); an empty guest
path is the login directory itself.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import paramiko

logger = logging.getLogger(__name__)


class CopyError(Exception):
    """A copy failed: a source is missing, a target is not a directory, an I/O error."""


def guest_path(path: str) -> str:
    """``path`` as SFTP wants it: ``~`` and ``~/x`` relative to the login directory."""
    if path in ("", "~"):
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path


@contextlib.contextmanager
def _about(where: str) -> Iterator[None]:
    """Turn an OSError from the block into a CopyError that names ``where``."""
    try:
        yield
    except CopyError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CopyError(f"{where}: {reason}") from exc


def _remote_stat(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    try:
        return sftp.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def _is_dir(attrs: paramiko.SFTPAttributes | None) -> bool:
    return attrs is not None and attrs.st_mode is not None and stat.S_ISDIR(attrs.st_mode)


def _mode(attrs: paramiko.SFTPAttributes) -> int:
    return stat.S_IMODE(attrs.st_mode or 0o644)


def _check_count(count: int, dest: str, dest_is_dir: bool) -> None:
    if count > 1 and not dest_is_dir:
        raise CopyError(f"{dest}: not a directory (copying {count} sources there)")


# -- host to guest --------------------------------------------------------------------------

def upload(sftp: paramiko.SFTPClient, sources: Sequence[Path], dest: str) -> list[str]:
    """Copy local ``sources`` to guest path ``dest``; return the guest paths written."""
    target_root = guest_path(dest)
    with _about(f"guest {dest}"):
        dest_is_dir = _is_dir(_remote_stat(sftp, target_root))
    _check_count(len(sources), f"guest {dest}", dest_is_dir)
    copied = []
    for source in map(Path, sources):
        with _about(str(source)):
            info = source.stat()
        target = posixpath.join(target_root, _local_name(source)) if dest_is_dir \
            else target_root
        _upload_entry(sftp, source, info, target, set())
        copied.append(target)
    return copied


def _local_name(source: Path) -> str:
    name = source.name or source.resolve().name
    if not name or name == "..":
        name = source.resolve().name
    if not name:
        raise CopyError(f"{source}: cannot copy the root directory into another one")
    return name


def _upload_entry(sftp: paramiko.SFTPClient, source: Path, info: os.stat_result, target: str,
                  seen: set[tuple[int, int]]) -> None:
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISREG(info.st_mode):
        with _about(f"{source} -> guest {target}"):
            sftp.put(str(source), target)
            sftp.chmod(target, mode)
        return
    if not stat.S_ISDIR(info.st_mode):
        logger.warning("skipping %s: not a regular file or directory", source)
        return
    if (info.st_dev, info.st_ino) in seen:
        logger.warning("skipping %s: directory already copied (a symbolic link loop)", source)
        return
    seen.add((info.st_dev, info.st_ino))
    with _about(f"guest {target}"):
        existing = _remote_stat(sftp, target)
        if existing is None:
            sftp.mkdir(target, 0o700)
        elif not _is_dir(existing):
            raise CopyError(f"guest {target}: exists and is not a directory")
    with _about(str(source)):
        entries = sorted(os.scandir(source), key=lambda e: e.name)
    for entry in entries:
        try:
            child_info = os.stat(entry.path)  # follows symbolic links, as scp does
        except FileNotFoundError:
            logger.warning("skipping %s: a dangling symbolic link", entry.path)
            continue
        _upload_entry(sftp, Path(entry.path), child_info, posixpath.join(target, entry.name),
                      seen)
    with _about(f"guest {target}"):
        sftp.chmod(target, mode)


# -- guest to host --------------------------------------------------------------------------

def download(sftp: paramiko.SFTPClient, sources: Sequence[str], dest: Path) -> list[Path]:
    """Copy guest ``sources`` to local path ``dest``; return the local paths written."""
    dest = Path(dest)
    dest_is_dir = dest.is_dir()
    _check_count(len(sources), str(dest), dest_is_dir)
    copied = []
    for source in sources:
        path = guest_path(source)
        with _about(f"guest {source}"):
            attrs = sftp.stat(path)
            name = _remote_name(sftp, path)
        target = dest / name if dest_is_dir else dest
        _download_entry(sftp, path, attrs, target, set())
        copied.append(target)
    return copied


def _remote_name(sftp: paramiko.SFTPClient, path: str) -> str:
    name = posixpath.basename(posixpath.normpath(path))
    if name in ("", ".", ".."):
        name = posixpath.basename(sftp.normalize(path))
    if not name:
        raise CopyError(f"guest {path}: cannot copy the root directory into another one")
    return name


def _download_entry(sftp: paramiko.SFTPClient, path: str, attrs: paramiko.SFTPAttributes,
                    target: Path, seen: set[str]) -> None:
    kind = attrs.st_mode or 0
    if stat.S_ISREG(kind):
        with _about(f"guest {path} -> {target}"):
            sftp.get(path, str(target))
            os.chmod(target, _mode(attrs))
        return
    if not stat.S_ISDIR(kind):
        logger.warning("skipping guest %s: not a regular file or directory", path)
        return
    with _about(f"guest {path}"):
        real = sftp.normalize(path)
        if real in seen:
            logger.warning("skipping guest %s: directory already copied (a symbolic link "
                           "loop)", path)
            return
        seen.add(real)
        entries = sorted(sftp.listdir_attr(path), key=lambda a: a.filename)
    with _about(str(target)):
        if target.is_dir():
            pass
        elif target.exists():
            raise CopyError(f"{target}: exists and is not a directory")
        else:
            target.mkdir(mode=0o700)
    for entry in entries:
        child = posixpath.join(path, entry.filename)
        if entry.st_mode is not None and stat.S_ISLNK(entry.st_mode):
            try:
                entry = sftp.stat(child)  # follow it, as scp does
            except OSError:
                logger.warning("skipping guest %s: a dangling symbolic link", child)
                continue
        _download_entry(sftp, child, entry, target / posixpath.basename(child), seen)
    with _about(str(target)):
        os.chmod(target, _mode(attrs))
