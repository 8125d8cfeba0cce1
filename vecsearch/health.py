"""`check_index`: is anything of an index damaged? The database, the stored vectors, the structure file.

Runs without building a searcher: opening a `VecIndex` would already rebuild a damaged
structure file (and write into the database), which is the check's to report first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import DB_NAME, VECTORS_NAME, resolve_index_dir
from .errors import RESTORE_DATABASE, DatabaseDamagedError, IndexNotFoundError
from .search import check_file
from .store import Store

__all__ = ["IndexCheck", "check_index"]


@dataclass
class IndexCheck:
    """What `check_index` found; `ok` when nothing is damaged."""

    directory: Path
    database: list[str] = field(default_factory=list)
    """SQLite's problems with index.db (integrity_check, foreign keys, slots); empty: sound."""
    vectors: int = 0
    """Stored vectors whose checksums were read (none when the database is damaged: it holds them)."""
    damaged_vectors: list[int] = field(default_factory=list)
    """Ids of images whose stored vector bytes no longer match their CRC-32."""
    structure: str | None = None
    """What is wrong with vectors.faiss by its sidecar's checksum; None: sound, or none (flat)."""
    structure_checked: bool = False
    """Whether there was a vectors.faiss to check (flat indexes have none: the vectors are searched)."""

    @property
    def ok(self) -> bool:
        return not (self.database or self.damaged_vectors or self.structure)

    def problems(self) -> list[str]:
        """One line per kind of damage found: what, and what to do."""
        db = self.directory / DB_NAME
        lines = []
        if self.database:
            lines.append(str(DatabaseDamagedError(db, self.database)))
        if self.damaged_vectors:
            n = len(self.damaged_vectors)
            lines.append(
                f"{n} stored vector{'s' if n != 1 else ''} of {self.directory} changed on disk since "
                "written (checksum mismatch); they are never returned as results, and the next "
                "`vecsearch index` of their folders embeds them again."
            )
        if self.structure:
            lines.append(
                f"{self.structure}: the next command rebuilds it from the stored vectors (or run `vecsearch reindex` now)."
            )
        return lines

    def to_dict(self) -> dict:
        return {
            "index": str(self.directory),
            "ok": self.ok,
            "database": {
                "ok": not self.database,
                "problems": self.database,
                "advice": RESTORE_DATABASE if self.database else None,
            },
            "vectors": {"ok": not self.damaged_vectors, "checked": self.vectors, "damaged_ids": self.damaged_vectors},
            "structure": {"ok": self.structure is None, "checked": self.structure_checked, "problem": self.structure},
            "problems": self.problems(),
        }


def check_index(path: str | os.PathLike | None = None) -> IndexCheck:
    """Check the index at `path` (else $VECSEARCH_INDEX, else the default) for damage.

    index.db gets SQLite's full `integrity_check` plus foreign keys and the vectors' slots;
    then, if it is sound, every stored vector's CRC-32 is read (one streaming pass) and
    vectors.faiss is compared with its sidecar's checksum. Writes nothing, except the
    migrations an older index needs (as any command would run on it).
    """
    directory = resolve_index_dir(path)
    db = directory / DB_NAME
    if not db.is_file():
        raise IndexNotFoundError(f"No index at {directory}: nothing to check.", option="index")
    report = IndexCheck(directory)
    read_only = not (os.access(directory, os.W_OK) and os.access(db, os.W_OK))
    try:
        store = Store(db, read_only=read_only)
    except DatabaseDamagedError as e:
        report.database = e.problems
        return report
    try:
        report.database = store.database_problems(full=True)
        if report.database or store.info() is None:
            return report
        report.vectors = store.counts()["vectors"]
        report.damaged_vectors = store.damaged_vectors()
        report.structure_checked = os.path.lexists(directory / VECTORS_NAME)
        report.structure = check_file(directory / VECTORS_NAME)
    finally:
        store.close()
    return report
