"""The full vectors, stored once: append-only float32 shard files beside `index.db`.

Row `slot` of the collection lives in `vectors/shard-NNNNNN.f32` at row `slot % SHARD_ROWS`
(raw little-endian float32, `dim` per row, no header). The database keeps the commit point
(`index_info.next_slot`) and the id -> slot map: a writer writes rows at and past the
commit point, fsyncs them, and only then commits the transaction that points at them and
moves the commit point. Rows below it never change, so readers need no lock; rows past it
are scratch that a crash may leave behind and the next writer overwrites.

Reads memory-map only the rows they need and unmap them at once, so reading any number
of vectors in chunks keeps the process's memory flat.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

SHARD_ROWS = 1 << 16
"""Rows per shard file: 512 MiB of 2048-d float32."""
PREAD_ROWS = 4096
"""Reads of at most this many rows use pread; larger ones map the shard."""
DIRNAME = "vectors"


class Shards:
    """Fixed-width float32 rows addressed by slot, across shard files in one folder."""

    def __init__(self, directory: Path, dim: int):
        self.directory = Path(directory)
        self.dim = int(dim)
        self.row_bytes = 4 * self.dim
        self._fds: dict[int, int] = {}  # shard -> read-only descriptor, for the small reads of re-ranking
        self._fds_lock = threading.Lock()

    def close(self) -> None:
        with self._fds_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _fd(self, shard: int) -> int:
        with self._fds_lock:
            fd = self._fds.get(shard)
            if fd is None:
                try:
                    fd = os.open(self.path(shard), os.O_RDONLY)
                except FileNotFoundError as e:
                    from ..errors import IndexCorruptError

                    raise IndexCorruptError(
                        f"Vector file {self.path(shard)} is missing. Restore the index folder "
                        "from a backup or `vecsearch export`, or index again."
                    ) from e
                self._fds[shard] = fd
            return fd

    def path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:06d}.f32"

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write rows at slots start, start+1, ... and fsync them (before the commit that uses them)."""
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows must be (n, {self.dim}), got {rows.shape}")
        if not len(rows):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        slot, done = int(start), 0
        while done < len(rows):
            shard, row = divmod(slot, SHARD_ROWS)
            n = min(len(rows) - done, SHARD_ROWS - row)
            fd = os.open(self.path(shard), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, rows[done : done + n].data.cast("B"), row * self.row_bytes)  # no copy
                os.fsync(fd)
            finally:
                os.close(fd)
            slot, done = slot + n, done + n

    def holds(self, start: int, rows: np.ndarray) -> bool:
        """Whether the files hold exactly these rows at slots start, start+1, ... already.

        What a re-run of an interrupted migration asks before writing a run of rows again.
        """
        rows = np.ascontiguousarray(rows, dtype="<f4")
        slot, done = int(start), 0
        while done < len(rows):
            shard, row = divmod(slot, SHARD_ROWS)
            n = min(len(rows) - done, SHARD_ROWS - row)
            want = rows[done : done + n].data.cast("B")
            try:
                fd = os.open(self.path(shard), os.O_RDONLY)
            except FileNotFoundError:
                return False
            try:
                if os.pread(fd, len(want), row * self.row_bytes) != want:  # short or different
                    return False
            finally:
                os.close(fd)
            slot, done = slot + n, done + n
        return True

    def sync(self) -> None:
        """fsync every shard file and the folder: rows kept from an earlier process may not be on disk yet."""
        if not self.directory.exists():
            return
        for p in self.directory.glob("shard-*.f32"):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if hasattr(os, "O_DIRECTORY"):  # POSIX: the folder's entries (new files) are durable too
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self, slots) -> np.ndarray:
        """Rows at the given slots (any order, repeats allowed), as a new (n, dim) float32 array."""
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        out = np.empty((len(slots), self.dim), np.float32)
        if not len(slots):
            return out
        shard_of, row_of = np.divmod(slots, SHARD_ROWS)
        if len(slots) <= PREAD_ROWS:
            # A few rows (re-ranking a query's candidates): positional reads through the page
            # cache. No mapping is set up per call, and nothing stays in this process's memory.
            for j, (shard, row) in enumerate(zip(shard_of.tolist(), row_of.tolist(), strict=False)):
                buf = os.pread(self._fd(shard), self.row_bytes, row * self.row_bytes)
                if len(buf) != self.row_bytes:
                    from ..errors import IndexCorruptError

                    raise IndexCorruptError(
                        f"Vector file {self.path(shard)} is shorter than the index says. Restore "
                        "the index folder from a backup or `vecsearch export`, or index again."
                    )
                out[j] = np.frombuffer(buf, "<f4")
            return out
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            rows = row_of[where]
            mm = self._map(int(shard), int(rows.max()) + 1)
            try:
                out[where] = mm[rows]
            finally:
                del mm  # unmap now: the pages leave this process's memory
        return out

    def read_range(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first slot, rows) for slots start..stop-1, one shard's part at a time (a memory map: use, then drop)."""
        slot = int(start)
        while slot < stop:
            shard, row = divmod(slot, SHARD_ROWS)
            n = min(stop - slot, SHARD_ROWS - row)
            mm = self._map(shard, row + n)
            yield slot, mm[row : row + n]
            del mm
            slot += n

    def _map(self, shard: int, rows: int) -> np.ndarray:
        path = self.path(shard)
        try:
            return np.memmap(path, dtype="<f4", mode="r", shape=(rows, self.dim))
        except (FileNotFoundError, ValueError) as e:  # ValueError: the file is shorter than the rows asked for
            from ..errors import IndexCorruptError

            raise IndexCorruptError(
                f"Vector file {path} is missing or shorter than the index says ({e}). "
                "Restore the index folder from a backup or `vecsearch export`, or index again."
            ) from e

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("shard-*.f32")) if self.directory.exists() else 0

    def truncate(self, next_slot: int) -> None:
        """Drop scratch rows past the commit point and shard files wholly past it (after a rewrite)."""
        if not self.directory.exists():
            return
        last_shard, last_row = divmod(int(next_slot), SHARD_ROWS)
        for p in self.directory.glob("shard-*.f32"):
            shard = int(p.stem.split("-")[1])
            if shard > last_shard or (shard == last_shard and last_row == 0):
                p.unlink()
            elif shard == last_shard and p.stat().st_size > last_row * self.row_bytes:
                os.truncate(p, last_row * self.row_bytes)
