"""Where the state file lives, and every file operation on it, done safely for a root daemon.

The state file holds guests' memory and is read back as trusted input, so tmemd (usually
root on a shared host) follows these rules (docs/state-file.md):

- the directory must be owned by the daemon's user and writable by nobody else (no group or
  other write bit, sticky or not). It is opened once; every later operation names files
  relative to that open directory, so a path swapped underneath cannot redirect them;
- a save writes a new file with an unpredictable name (``.<name>.tmp-<16 hex digits>``),
  created with O_EXCL|O_NOFOLLOW and mode 0600, fsyncs it, renames it over the state file
  (a rename replaces a symlink there, it never follows it) and fsyncs the directory;
- a file is read back only when it is a regular file (opened with O_NOFOLLOW|O_NONBLOCK, so a
  symlink or a FIFO cannot redirect or block the start), owned by the daemon's user and not
  writable by group or others;
- ``<name>.lock`` (flock, held while the daemon runs) keeps a second daemon off the same
  state file; temporary files left by a killed save are removed at start, but only those
  with the daemon's own name pattern that are regular files owned by its user.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from typing import IO, TypeVar

from ..store.errors import TmemError

log = logging.getLogger(__name__)

STATE_FILE_MODE = 0o600  # it holds guest memory
RESTORED_SUFFIX = ".restored"
LOCK_SUFFIX = ".lock"
DISCARDED_INFIX = ".discarded-"
_TEMP_TAG = ".tmp-"
_TEMP_HEX_DIGITS = 16
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
T = TypeVar("T")


class StateFileError(TmemError):
    """The state file cannot be written, or is unsafe, unreadable, corrupt or truncated."""


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def file_kind(mode: int) -> str:
    """A file type in words, for messages."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "an unknown kind of file"


def _check_owner_and_mode(st: os.stat_result, what: str, action: str) -> None:
    uid = os.geteuid()
    if st.st_uid != uid:
        raise StateFileError(f"{what} is owned by uid {st.st_uid}, not by this daemon's user"
                             f" (uid {uid}); {action}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateFileError(f"{what} is writable by group or others"
                             f" (mode {stat.S_IMODE(st.st_mode):04o}); {action}")


class StateDir:
    """The state file's directory, open and checked; the operations on the state file in it.

    Opening checks the directory and, with ``lock``, takes ``<name>.lock`` and removes stale
    temporary files. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str, lock: bool = False) -> None:
        self.path = path
        self.directory, self.name = os.path.split(os.path.abspath(path))
        self._lock_fd: int | None = None
        self._fd = self._open_directory()
        try:
            self.check_directory()
            self._check_not_a_directory()
            if lock:
                self._lock()
                self.clean_stale_temporaries()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> StateDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the directory and release the lock (the lock file stays, unlocked)."""
        for fd in (self._lock_fd, self._fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._lock_fd, self._fd = None, -1

    # ----- checks ------------------------------------------------------------------------
    def _open_directory(self) -> int:
        try:
            return os.open(self.directory, _OPEN_DIR)
        except FileNotFoundError:
            raise StateFileError(f"state file {self.path}: directory {self.directory}"
                                 " does not exist") from None
        except NotADirectoryError:
            raise StateFileError(f"state file {self.path}: {self.directory} is not a"
                                 " directory") from None
        except OSError as exc:
            raise StateFileError(f"state file {self.path}: cannot open directory"
                                 f" {self.directory}: {_why(exc)}") from exc

    def check_directory(self) -> None:
        """Refuse a directory not owned by the daemon's user or writable by group or others."""
        _check_owner_and_mode(
            os.fstat(self._fd), f"state file directory {self.directory}",
            "use a directory that only this daemon's user owns and can write (e.g. mode 0700)",
        )

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _check_not_a_directory(self) -> None:
        st = self._lstat(self.name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise StateFileError(f"state file {self.path} is a directory")

    def _lock(self) -> None:
        lock_name = self.name + LOCK_SUFFIX
        try:
            fd = os.open(lock_name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         STATE_FILE_MODE, dir_fd=self._fd)
        except OSError as exc:
            raise StateFileError(f"state file {self.path}: cannot open lock file"
                                 f" {lock_name}: {_why(exc)}") from exc
        self._lock_fd = fd
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateFileError(f"state file {self.path}: lock file {lock_name} is not a"
                                 " regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateFileError(f"state file {self.path} is in use by another tmemd"
                                 f" (it holds {lock_name})") from None

    # ----- start-up ----------------------------------------------------------------------
    def _is_temporary(self, name: str) -> bool:
        prefix = f".{self.name}{_TEMP_TAG}"
        return (name.startswith(prefix) and len(name) == len(prefix) + _TEMP_HEX_DIGITS
                and re.fullmatch(r"[0-9a-f]+", name[len(prefix):]) is not None)

    def clean_stale_temporaries(self) -> list[str]:
        """Remove temporary files an interrupted save left; returns their names.

        Only names of the daemon's own pattern that are regular files owned by its user; with
        the lock held no save of another daemon can be running.
        """
        removed = []
        for name in sorted(os.listdir(self._fd)):
            if not self._is_temporary(name):
                continue
            st = self._lstat(name)
            if st is None:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                log.warning("leaving %s in %s alone: %s owned by uid %d, not a temporary file"
                            " of this daemon", name, self.directory, file_kind(st.st_mode),
                            st.st_uid)
                continue
            os.unlink(name, dir_fd=self._fd)
            removed.append(name)
            log.warning("removed %s (%d bytes) from %s: left by a save that was interrupted",
                        name, st.st_size, self.directory)
        return removed

    def open_saved(self) -> IO[bytes] | None:
        """The state file opened for reading after the checks; None when there is none.

        Refused (StateFileError): not a regular file (a symlink is never followed, a FIFO
        never blocks), not owned by the daemon's user, or writable by group or others.
        """
        action = "refusing to restore it"
        st = self._lstat(self.name)
        if st is None:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(f"state file {self.path} is {file_kind(st.st_mode)}, not a"
                                 f" regular file; {action}")
        try:
            fd = os.open(self.name, _READ, dir_fd=self._fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateFileError(f"state file {self.path} is a symbolic link; {action}"
                                     ) from None
            raise StateFileError(f"cannot read state file {self.path}: {_why(exc)}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StateFileError(f"state file {self.path} is {file_kind(st.st_mode)}, not"
                                     f" a regular file; {action}")
            _check_owner_and_mode(st, f"state file {self.path}", action)
            os.set_blocking(fd, True)
            return open(fd, "rb", buffering=1 << 20)  # the caller closes it
        except BaseException:
            os.close(fd)
            raise

    # ----- renames -----------------------------------------------------------------------
    def _rename(self, old: str, new: str) -> None:
        os.rename(old, new, src_dir_fd=self._fd, dst_dir_fd=self._fd)

    def retire(self) -> str:
        """Rename the restored state file to ``<name>.restored`` (durably); returns the path.

        Once restored the file describes the past: a start after a crash must not bring it back.
        """
        try:
            self._rename(self.name, self.name + RESTORED_SUFFIX)
            os.fsync(self._fd)
        except OSError as exc:
            raise StateFileError(f"cannot retire restored state file {self.path}:"
                                 f" {_why(exc)}") from exc
        return self.path + RESTORED_SUFFIX

    def move_aside(self) -> str | None:
        """Rename the state file to ``<name>.discarded-<UTC time>``; None when there is none."""
        if self._lstat(self.name) is None:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{self.name}{DISCARDED_INFIX}{stamp}"
        number = 1
        while self._lstat(aside) is not None:
            number += 1
            aside = f"{self.name}{DISCARDED_INFIX}{stamp}-{number}"
        try:
            self._rename(self.name, aside)
            os.fsync(self._fd)
        except OSError as exc:
            raise StateFileError(f"cannot move state file {self.path} aside: {_why(exc)}"
                                 ) from exc
        return os.path.join(self.directory, aside)

    def remove_restored(self) -> bool:
        """Remove ``<name>.restored`` (after a successful save has replaced it)."""
        try:
            os.unlink(self.name + RESTORED_SUFFIX, dir_fd=self._fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot remove %s%s: %s", self.path, RESTORED_SUFFIX, _why(exc))
            return False
        return True

    # ----- saving ------------------------------------------------------------------------
    def _create_temporary(self) -> tuple[str, int]:
        for _attempt in range(100):
            name = f".{self.name}{_TEMP_TAG}{secrets.token_hex(_TEMP_HEX_DIGITS // 2)}"
            try:
                fd = os.open(name, _CREATE, STATE_FILE_MODE, dir_fd=self._fd)
            except FileExistsError:
                continue
            os.fchmod(fd, STATE_FILE_MODE)  # whatever the umask
            return name, fd
        raise FileExistsError(errno.EEXIST, "no free temporary file name", self.directory)

    def save(self, write: Callable[[IO[bytes]], T]) -> T:
        """Write a new state file with ``write(stream)`` and put it in place atomically.

        On any failure the temporary file is removed and the file at the state path (if any)
        is left as it was. Returns what ``write`` returned.
        """
        try:
            self.check_directory()  # it may have changed since the start
            self._check_not_a_directory()
            name, fd = self._create_temporary()
        except OSError as exc:
            raise StateFileError(f"cannot write state file {self.path}: {_why(exc)}") from exc
        temporary: str | None = name
        try:
            with open(fd, "wb", buffering=1 << 20) as stream:
                result = write(stream)
                stream.flush()
                os.fsync(stream.fileno())
            self._rename(name, self.name)
            temporary = None
            os.fsync(self._fd)
        except OSError as exc:
            raise StateFileError(f"cannot write state file {self.path}: {_why(exc)}") from exc
        finally:
            if temporary is not None:
                try:
                    os.unlink(temporary, dir_fd=self._fd)
                except OSError as exc:
                    log.error("cannot remove temporary file %s in %s: %s", temporary,
                              self.directory, _why(exc))
        return result
