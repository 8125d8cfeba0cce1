"""Exceptions raised by vecsearch. The CLI and the HTTP service turn them into messages.

`fault_message` does the same for the faults of the machine underneath (the disk, the
database file, the vector file), which arrive as OSError, SQLite or FAISS errors.
"""

import errno
from typing import Iterable

RESTORE_DATABASE = "Restore the index folder from a backup, or move it away and index again."
"""What to do about a damaged index.db: it is the source of truth, nothing rebuilds it."""


class VecsearchError(Exception):
    """Base class of every error vecsearch raises on purpose.

    Messages speak the library's terms (`weights`, `unchecked`); `option` names the
    argument a fix would change, so a front end can add its own spelling of it (the CLI
    adds its flag, e.g. `--weights`).
    """

    def __init__(self, *args, option: str | None = None):
        super().__init__(*args)
        self.option = option


def short_error(e: Exception) -> str:
    """The first line of a dependency's exception, capped: what a message quotes of it."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


class NoTextTowerError(VecsearchError):
    """Search by text or zero-shot classes asked of a backbone that embeds images only."""


class BadImageError(VecsearchError):
    """One image could not be read; `reason` says why in a few words."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class BadVectorError(VecsearchError):
    """A query vector no search can use: the wrong dimension, NaN or infinite entries, or all zeros."""


class ReadOnlyIndexError(VecsearchError):
    """A write to an index this process may only read (the folder or its database is not writable)."""


class ServiceBusyError(VecsearchError):
    """The service cannot take this request now (its queue is full); try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class RequestDroppedError(VecsearchError):
    """A request was dropped before its model call: its deadline passed or its client went away."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class InputNotFoundError(VecsearchError):
    """A path given to index or query does not exist."""


class NoImagesError(VecsearchError):
    """The paths given hold no image files."""


class IndexNotFoundError(VecsearchError):
    """No index exists at the given location."""


class IndexMismatchError(VecsearchError):
    """The requested backbone or weights differ from those that built the index."""


class IndexLockedError(VecsearchError):
    """Another process is writing to the index; one writer at a time."""


class IndexCorruptError(VecsearchError):
    """The vector file and the database disagree in a way that cannot be repaired."""


class BadVectorFileError(VecsearchError):
    """A file given to `import` cannot be imported as it is: malformed, over a cap, or repeating
    a path. The file is at fault, not the index, which is left as it was."""


class DatabaseDamagedError(IndexCorruptError):
    """index.db fails SQLite's integrity check or cannot be read as a database: answers from it could be wrong.

    `problems` are SQLite's own lines (the first few).
    """

    def __init__(self, path, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        super().__init__(
            f"{path} is damaged: {self.problems[0] if self.problems else 'unknown damage'}{more}. {RESTORE_DATABASE}"
        )


class StructureError(VecsearchError):
    """The search structure asked for cannot be built: FAISS rejects its factory string, it
    cannot be trained on the vectors there are, or it does not fit the memory budget. Nothing
    was changed: the index keeps the structure it had. `needed`: the vectors it would train on
    (None when more vectors would not help)."""

    def __init__(self, *args, option: str | None = None, needed: int | None = None):
        super().__init__(*args, option=option)
        self.needed = needed


class UnknownBackboneError(VecsearchError):
    """The backbone name is not in the registry."""


class WeightsUnavailableError(VecsearchError):
    """Pretrained weights could not be downloaded or loaded."""


class NotIndexedError(VecsearchError):
    """An id or path that is not in the index."""


class NoLabelsError(VecsearchError):
    """The index has no user labels to train on."""


class BadLabelsError(VecsearchError):
    """The labels cannot train or evaluate a classifier (one class, a class of one image)."""


class ClassifierNotFoundError(VecsearchError):
    """No trained classifier of that name in the index."""


class UnknownClassError(VecsearchError):
    """A name or WordNet id that is not one of the 1000 ImageNet classes."""


class UploadTooLargeError(VecsearchError):
    """An upload to the HTTP service is over its size cap."""


class RayClusterError(VecsearchError):
    """The Ray cluster at the given address cannot be joined: nothing answers there, or it refuses this process."""


class MissingExtraError(VecsearchError):
    """An optional feature's dependency is not installed; the message names the pip extra that brings it."""

    def __init__(self, message: str, extra: str, module: str):
        self.extra = extra
        self.module = module
        super().__init__(message)


_DISK_FULL = "The disk is full: free some space and run the command again (what was committed is kept)."
_PERMISSIONS = "Fix the permissions (or work on a copy you can write)."


def fault_message(e: BaseException) -> str | None:
    """One line for an OSError, a SQLite error or a FAISS I/O error: what is wrong and what to do."""
    if isinstance(e, OSError):
        where = f": {e.filename}" if e.filename else ""
        what = f"{e.strerror or e}{where}."
        if e.errno == errno.ENOSPC:
            return f"{what} {_DISK_FULL}"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{what} {_PERMISSIONS}"
        if e.errno == errno.EISDIR:
            return f"{what} A folder is where a file should be: move it away and run again."
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"{what} Check the path (does the folder exist?)."
        if e.errno == errno.EPIPE:  # not the disk: the reader of a pipe or a connection went away
            return f"{what} The program or connection at the other end went away; run again when it is back."
        return f"{what} Check the disk and the path, then run again."
    module = type(e).__module__ or ""
    if module.startswith(("sqlalchemy", "sqlite3")):
        text = str(getattr(e, "orig", None) or e).splitlines()[0]
        low = text.lower()
        if "full" in low:
            return f"Database error: {text}. {_DISK_FULL}"
        if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low:
            return f"The index database cannot be written or opened ({text}). {_PERMISSIONS}"
        if any(w in low for w in ("not a database", "malformed", "disk i/o", "encrypted", "could not decode")):
            return f"index.db is damaged: {text}. {RESTORE_DATABASE}"
        if "locked" in low or "busy" in low:
            return f"The index database is busy ({text}): another process holds it; try again."
        return f"Database error: {text}. Restore the index folder from a backup if this persists."
    if module.startswith("alembic"):
        return (
            f"The index database has a schema this vecsearch does not know ({str(e).splitlines()[0]}): "
            "use the vecsearch version that wrote it, or a newer one."
        )
    if isinstance(e, RuntimeError) and ("faiss" in str(e).lower()):
        text = str(e)
        reason = text.rsplit("Error: ", 1)[-1].strip().splitlines()[0] if "Error: " in text else text.splitlines()[0]
        low = text.lower()
        if "no space" in low:
            return f"The vector file could not be written ({reason}). {_DISK_FULL}"
        if any(w in low for w in ("fileio", "could not open", "read error", "write error", "fread", "fwrite")):
            return (
                f"The vector file could not be read or written ({reason}). Move vectors.faiss away and run "
                "again (it is rebuilt from the database); free disk space or fix permissions if that is the cause."
            )
        # Not the disk: FAISS refused the structure itself (vecsearch turns the known cases into
        # StructureError; this is the net under the rest).
        return (
            f"FAISS failed on the search structure ({reason}). The stored vectors are intact: "
            "`vecsearch reindex --index-type flat` searches them exactly."
        )
    return None


def check_keywords(what: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Refuse a misspelt keyword passed through `**options`, as Python refuses one it declares."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"{what}() got an unexpected keyword argument {unknown[0]!r}")
