"""Files read and written safely: the guarded reader, atomic replacement, the one-writer lock.

Every file vecsearch reads from a user's folders (images, CSVs, label files) goes through one
guarded reader (`read_file`): regular files only, checked before and after opening without
blocking, a byte cap before reading and a time limit while reading, so a FIFO, a socket or a
device is reported as a BadImageError, never waited on.

The write side is about surviving a crash: a reader sees the old file or the whole new one, and
a lock held by a process that dies is released by the OS, never left behind to clear by hand.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .config import MAX_IMAGE_BYTES, MAX_READ_SECONDS
from .errors import BadImageError, IndexLockedError

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


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


def atomic_write(path: str | os.PathLike, write_tmp: Callable[[Path], object], suffix: str = ".tmp") -> None:
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
    def held(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the lock for the block, or raise IndexLockedError if another writer still has it
        after `wait` seconds (at once by default: a CLI run should say so, not hang)."""
        from filelock import Timeout

        if not self._usable():
            raise IndexLockedError(
                f"{self.path} is not a file, so no one can take the index's write lock: move it away and run again."
            )
        lock = self._lock()
        try:
            lock.acquire(timeout=wait, poll_interval=0.02)
        except Timeout:
            raise IndexLockedError(f"Another vecsearch run is writing to {self.path.parent}; wait for it to finish.") from None
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


# -- the guarded reader ----------------------------------------------------------------
def absolute(path: str | os.PathLike) -> Path:
    """`path` made absolute and normalised, symbolic links kept as given (never resolved).

    An index stores paths as they are under the folder it was given: a link inside the
    folder is recorded under its own name, so it is reconciled when the link changes or goes.
    """
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


def os_reason(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """A short reason for an OSError met while looking at one file."""
    if exc.errno == errno.ELOOP:
        return "unreadable: a symbolic link loop"
    if exc.errno == errno.ENOENT and path is not None and os.path.islink(path):
        return "unreadable: a broken symbolic link (its target does not exist)"
    if exc.errno == errno.ENOENT:
        return "unreadable: no longer there"
    return f"unreadable: {exc.strerror or exc}"


@contextmanager
def _open_regular(path: Path) -> Iterator[tuple[int, os.stat_result]]:
    """(fd, fstat) of a regular file, or BadImageError; never blocks on a FIFO or a device.

    `stat` first so nothing else is opened at all; `O_NONBLOCK` so a FIFO swapped in
    between cannot block the open; `fstat` after, on what was really opened.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BadImageError(os_reason(exc, path), path=str(path)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise BadImageError(f"unreadable: {file_kind(st.st_mode)}", path=str(path))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BadImageError(os_reason(exc, path), path=str(path)) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImageError(f"unreadable: {file_kind(st.st_mode)}", path=str(path))
        yield fd, st
    finally:
        os.close(fd)


def _chunks(fd: int, path: Path, limit: int, timeout: float) -> Iterator[bytes]:
    """The file's bytes in chunks, at most `limit` + 1 of them, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    left = limit + 1
    while left > 0:
        if time.monotonic() > deadline:
            raise BadImageError(f"unreadable: reading took more than {timeout:g} s", path=str(path))
        try:
            chunk = os.read(fd, min(_CHUNK, left))
        except OSError as exc:
            raise BadImageError(os_reason(exc), path=str(path)) from exc
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def read_file(path: str | os.PathLike, max_bytes: int = MAX_IMAGE_BYTES, *, timeout: float = MAX_READ_SECONDS) -> bytes:
    """All bytes of a regular file under the byte cap, read within the time limit; else BadImageError."""
    path = Path(path)
    with _open_regular(path) as (fd, st):
        if st.st_size > max_bytes:
            raise BadImageError(f"file too large: {st.st_size} bytes exceeds the cap of {max_bytes}", path=str(path))
        data = b"".join(_chunks(fd, path, max_bytes, timeout))
    if len(data) > max_bytes:  # the file grew after the stat
        raise BadImageError(f"file too large: more than {max_bytes} bytes exceeds the cap of {max_bytes}", path=str(path))
    return data


def read_head(path: str | os.PathLike, n: int) -> bytes:
    """The first `n` bytes of a regular file (b"" when it is anything else)."""
    try:
        with _open_regular(Path(path)) as (fd, _):
            return os.read(fd, n)
    except (BadImageError, OSError):
        return b""


def file_sha256(path: str | os.PathLike, *, timeout: float = MAX_READ_SECONDS) -> str:
    """SHA-256 hex digest of a regular file without holding it in memory; BadImageError otherwise."""
    path = Path(path)
    h = hashlib.sha256()
    with _open_regular(path) as (fd, _):
        for chunk in _chunks(fd, path, 2**62, timeout):
            h.update(chunk)
    return h.hexdigest()


def read_bytes(path: str | os.PathLike, *, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """An image file's bytes through the guarded reader (regular files only, byte cap, time limit)."""
    return read_file(path, max_bytes)


# -- serving an original file ----------------------------------------------------------------
class FileStream:
    """A regular file opened through the guarded checks, read once in chunks (`for chunk in f`).

    The reading stops at the size seen when opened, so a Content-Length sent from `size`
    holds even if the file grows. The file closes when the chunks run out, or on `close()`.
    """

    def __init__(self, path: Path, stack, fd: int, st: os.stat_result, head: bytes):
        self.path = path
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.media_type = media_type(head)
        self._stack = stack
        self._fd = fd
        self._head = head

    def __iter__(self) -> Iterator[bytes]:
        try:
            if self._fd < 0:
                return
            left = self.size - len(self._head)
            if self._head:
                yield self._head
            while left > 0:
                try:
                    chunk = os.read(self._fd, min(_CHUNK, left))
                except OSError as exc:
                    raise BadImageError(os_reason(exc), path=str(self.path)) from exc
                if not chunk:
                    return  # it shrank since the stat: the client sees a short body
                left -= len(chunk)
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._fd = -1
        self._stack.close()

    def __del__(self):  # a response never sent still closes its file
        self._stack.close()


def open_stream(path: str | os.PathLike, *, max_bytes: int = MAX_IMAGE_BYTES) -> FileStream:
    """An image file opened for streaming: regular files only, under the byte cap; else BadImageError.

    Its `media_type` is read from the first bytes (Pillow's own identification), never from
    the name, and is None for anything Pillow does not recognise as an image.
    """
    from contextlib import ExitStack

    path = Path(path)
    stack = ExitStack()
    try:
        fd, st = stack.enter_context(_open_regular(path))
        if st.st_size > max_bytes:
            raise BadImageError(f"file too large: {st.st_size} bytes exceeds the cap of {max_bytes}", path=str(path))
        try:
            head = os.read(fd, min(_CHUNK, st.st_size))
        except OSError as exc:
            raise BadImageError(os_reason(exc), path=str(path)) from exc
        return FileStream(path, stack, fd, st, head)
    except BaseException:
        stack.close()
        raise


def media_type(head: bytes) -> str | None:
    """The image/* MIME type of a file's first bytes as Pillow identifies them, else None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(head)) as im:
            fmt = im.format
    except Exception:  # noqa: BLE001 -- any failure to identify means "not known as an image"
        return None
    mime = Image.MIME.get(fmt or "")
    return mime if mime and mime.startswith("image/") else None
