"""Files an index writes: atomic replacement, and the one-writer lock.

Both are about surviving a crash: a reader sees the old file or the whole new one, and a
lock held by a process that dies is released by the OS, never left behind to clear by hand.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import IndexLockedError

log = logging.getLogger(__name__)


def fsync_dir(directory: Path) -> None:
    """Persist a rename: without this a crash can forget the new directory entry."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:  # e.g. platforms that cannot open directories
        log.debug("cannot open %s to fsync it: %s", directory, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories
        log.debug("fsync of directory %s failed: %s", directory, exc)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_tmp: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Write via `write_tmp(tmp_path)` to a temp file beside `path`, fsync, then rename over it.

    Readers see either the old file or the complete new one, never a partial write, and a
    failure leaves the old file untouched and no temp file behind. `suffix` is for writers
    that insist on an extension (Keras wants `.keras`). The temp name is unique, so two
    processes writing the same file at once cannot collide.
    """
    path = Path(path)
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        write_tmp(tmp)
        # mkstemp creates 0600; keep the mode of the file being replaced, else a normal 0644.
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


class WriterLock:
    """One writer per index folder, across processes (`filelock`: flock on POSIX, msvcrt on Windows).

    The OS drops the lock when its holder dies, even by SIGKILL, so an interrupted run
    never leaves a lock to remove by hand.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _usable(self) -> bool:
        """False when something other than a file (a folder) sits where the lock file goes."""
        return not (os.path.lexists(self.path) and not self.path.is_file())

    def _lock(self):
        from filelock import FileLock

        # thread_local=False: the server's threads share one lock object's state.
        return FileLock(self.path, timeout=0, thread_local=False, is_singleton=False)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the block, or raise IndexLockedError at once if another writer has it."""
        from filelock import Timeout

        if not self._usable():
            raise IndexLockedError(f"{self.path} is not a file, so no one can take the index's write lock: "
                                   "move it away and run again.")
        lock = self._lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise IndexLockedError(
                f"Another vecsearch run is writing to {self.path.parent}; wait for it to finish.") from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def if_free(self) -> Iterator[bool]:
        """Hold the lock for the block if no one else does; yields whether it is held."""
        from filelock import Timeout

        if not self._usable():
            log.warning("%s is not a file: not saving the repaired vector file", self.path)
            yield False
            return
        lock = self._lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        except OSError as exc:  # a read-only folder: readers go on without saving
            log.warning("cannot take the write lock %s (%s): not saving the repaired vector file", self.path, exc)
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
