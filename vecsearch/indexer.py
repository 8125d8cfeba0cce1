"""Writing to an index: the incremental plan, chunked commits, and keeping FAISS in step.

The database is the source of truth, vectors included; `vectors.faiss` is a search
structure derived from it. Every commit bumps the database's generation, and the FAISS
sidecar records the generation it holds, so a reader (or the next run after a crash) can
tell whether the file is current and, if not, repair it from id sets alone: new content
always gets a new id, so no id ever changes its vector.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import images
from .config import default_workers
from .errors import BadImageError, IndexCorruptError
from .extract import Extractor
from .store import ImageRecord, Store
from .vectors import FaissIndex

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

CHUNK_SIZE = 64
"""Images per commit: a killed run loses at most this many, and the next run resumes there."""
CHUNK_SECONDS = 10.0
"""...or this long, whichever comes first, so slow images still commit often."""


@dataclass
class FailedImage:
    path: str
    reason: str


@dataclass
class IndexSummary:
    """What one `add` did. total == indexed + unchanged + reused + len(failed)."""

    indexed: int = 0
    unchanged: int = 0
    reused: int = 0
    removed: int = 0
    removed_paths: list[str] = field(default_factory=list)
    failed: list[FailedImage] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """What a run must do per file, decided before any embedding."""

    stats: dict[Path, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    moves: list[tuple[int, dict]] = field(default_factory=list)  # (id, new fields): renamed or touched
    copies: list[tuple[int, dict]] = field(default_factory=list)  # (source id, new row): same content elsewhere
    deletes: list[int] = field(default_factory=list)  # ids whose files are gone
    to_embed: list[Path] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)  # failed rows for things found that are no image file


def is_unchanged(rec: ImageRecord, path: Path) -> bool:
    """True when the file still has the size and mtime recorded, so its stored vector holds."""
    try:
        st = Path(path).stat()
    except OSError:
        return False
    return st.st_size == rec.size and st.st_mtime_ns == rec.mtime_ns


def is_under(path: str, roots: list[Path]) -> bool:
    """True when `path` is one of `roots` or inside one of them."""
    return any(path == str(r) or path.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)


def _walked(path: str, roots: list[Path]) -> bool:
    """True when walking `roots` looks at `path` (no hidden part below the root it is under)."""
    for r in roots:
        if path == str(r):
            return True
        prefix = str(r).rstrip(os.sep) + os.sep
        if path.startswith(prefix):
            return not any(part.startswith(".") for part in path[len(prefix):].split(os.sep))
    return False


def _hash_all(paths: list[Path]) -> list[str | None]:
    def one(p: Path) -> str | None:
        try:
            return images.file_sha256(p)
        except (OSError, BadImageError):
            return None  # the decoder will report why

    with ThreadPoolExecutor(default_workers()) as pool:
        return list(pool.map(one, paths))


def plan(store: Store, roots: list[Path], files: list[Path], summary: IndexSummary,
         rejected: list[images.Found] = ()) -> Plan:
    """Decide per file: unchanged, moved, copied, or to embed; and which entries are gone.

    Size + mtime first; only files that differ are hashed, so a re-run of a large
    unchanged folder reads no image data. `rejected` are things found that cannot be
    image files (a FIFO, a folder named x.jpg, a broken link): each becomes a failed row.
    Every entry under `roots` is reconciled with what is there now: one whose path the
    walk no longer finds as an image file is dropped, even if something else (a link to
    elsewhere, a folder, a text file) now has its name. Entries are dropped only under `roots`.
    """
    records = store.records()
    out = Plan()
    found = {str(f) for f in files} | {str(r.path) for r in rejected}
    for r in rejected:
        rec = records.get(str(r.path))
        if rec is not None and rec.status == "failed" and rec.reason == r.reason:
            _count_existing(rec, summary)
            continue
        try:
            st = os.lstat(r.path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime_ns = 0, 0
        out.failures.append({"path": str(r.path), "size": size, "mtime_ns": mtime_ns, "sha256": None,
                             "width": None, "height": None, "status": "failed", "reason": r.reason})
        summary.failed.append(FailedImage(str(r.path), r.reason))
    candidates: list[Path] = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            candidates.append(f)  # the decoder will report why
            out.stats[f] = (0, 0)
            continue
        out.stats[f] = (st.st_size, st.st_mtime_ns)
        rec = records.get(str(f))
        if rec is not None and rec.size == st.st_size and rec.mtime_ns == st.st_mtime_ns:
            _count_existing(rec, summary)
        else:
            candidates.append(f)
    given_roots = [images.absolute(r) for r in roots]
    unseen = [r.path for r in rejected if r.unseen_below]
    # Not found but still there: only under a hidden folder the walk skips (or given itself),
    # or under a folder that could not be listed this time.
    gone_all = [rec for path, rec in records.items()
                if path not in found and is_under(path, given_roots) and not (unseen and is_under(path, unseen))
                and (_walked(path, given_roots) or not os.path.lexists(path))]
    gone = {rec.sha256: rec for rec in gone_all if rec.sha256 and rec.status == "ok"}
    gone_ids = {rec.id for rec in gone_all}
    if candidates and records:
        shas = dict(zip(candidates, _hash_all(candidates)))
        known = store.ok_ids_by_sha([s for s in shas.values() if s])
        for f in candidates:
            sha = shas[f]
            rec = records.get(str(f))
            size, mtime_ns = out.stats[f]
            if sha and rec is not None and rec.sha256 == sha:  # touched, not changed
                out.moves.append((rec.id, {"size": size, "mtime_ns": mtime_ns}))
                _count_existing(rec, summary)
                continue
            src = gone.get(sha) if sha else None
            if src is not None and rec is None:  # renamed or moved
                del gone[sha]
                out.moves.append((src.id, {"path": str(f), "size": size, "mtime_ns": mtime_ns}))
                summary.reused += 1
                continue
            if sha and sha in known and known[sha] not in gone_ids:  # a copy: reuse its vector
                out.copies.append((known[sha], {"path": str(f), "size": size, "mtime_ns": mtime_ns, "sha256": sha,
                                                "width": None, "height": None, "status": "ok", "reason": None}))
                summary.reused += 1
                continue
            out.to_embed.append(f)
    else:
        out.to_embed = candidates
    moved_ids = {m[0] for m in out.moves}
    for rec in gone_all:
        if rec.id not in moved_ids:
            out.deletes.append(rec.id)
            summary.removed_paths.append(rec.path)
    summary.removed = len(summary.removed_paths)
    summary.removed_paths.sort()
    return out


def _count_existing(rec: ImageRecord, summary: IndexSummary) -> None:
    if rec.status == "ok":
        summary.unchanged += 1
    else:
        summary.failed.append(FailedImage(rec.path, rec.reason or "failed"))


def commit(store: Store, faiss: FaissIndex, **changes) -> None:
    """Write one chunk to the database (one transaction), then mirror it in FAISS."""
    if not any(changes.values()):
        return
    result = store.apply(**changes)
    if result["unset"]:
        faiss.remove(np.array(result["unset"], np.int64))
    if result["set"]:
        ids, mat, _ = store.vectors(result["set"], dim=faiss.dim)
        faiss.add(ids, mat)


def run(store: Store, faiss: FaissIndex, extractor: Callable[[], Extractor], roots: list[Path], files: list[Path], *,
        progress: Progress | None = None, chunk_size: int = CHUNK_SIZE,
        chunk_seconds: float = CHUNK_SECONDS, rejected: list[images.Found] = ()) -> IndexSummary:
    """Bring the index up to date with `files` (found under `roots`); the caller holds the writer lock.

    `rejected` (found, but no readable image file) are stored as failed rows with their
    reasons. `extractor` is called only when something needs embedding, so a re-run of an
    unchanged folder never builds the model.
    """
    started = time.perf_counter()
    summary = IndexSummary(total=len(files) + len(rejected))
    todo = plan(store, roots, files, summary, rejected)
    commit(store, faiss, deletes=todo.deletes, moves=todo.moves, copies=todo.copies, upserts=todo.failures)
    total = len(todo.to_embed)
    if progress:
        progress(0, total)
    if total:
        done = 0
        chunk: list[dict] = []
        last_commit = time.monotonic()
        for item in extractor().embed_files(todo.to_embed):
            size, mtime_ns = todo.stats[item.path]
            row = {"path": str(item.path), "size": size, "mtime_ns": mtime_ns, "sha256": item.sha256 or None,
                   "width": item.width or None, "height": item.height or None}
            if item.error is None:
                row.update(status="ok", reason=None, vector=item.vector, norm=item.norm)
                summary.indexed += 1
            else:
                row.update(status="failed", reason=item.error)
                summary.failed.append(FailedImage(str(item.path), item.error))
            chunk.append(row)
            done += 1
            if len(chunk) >= chunk_size or time.monotonic() - last_commit > chunk_seconds:
                commit(store, faiss, upserts=chunk)
                chunk, last_commit = [], time.monotonic()
            if progress:
                progress(done, total)
        commit(store, faiss, upserts=chunk)
    summary.failed.sort(key=lambda f: f.path)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


# -- the FAISS file, kept in step with the database ----------------------------------
def load_synced(store: Store, path: Path, *, can_save: Callable[[], object]) -> tuple[FaissIndex, int]:
    """The FAISS index at `path` brought up to date with the database; (index, generation).

    A missing, torn, foreign or stale file is repaired from the database (only the ids that
    differ are added or removed). The repair is saved when `can_save()`, a context manager
    yielding whether the writer lock is free, says so: an indexer holding the lock saves
    its own state.
    """
    info = store.info()
    generation = store.generation()
    faiss, meta = None, {}
    for attempt in range(2):
        try:
            faiss, meta = FaissIndex.load(path)
            break
        except FileNotFoundError:
            break
        except IndexCorruptError as e:
            # Maybe a save was between its two renames; look once more, then rebuild.
            if attempt == 0:
                time.sleep(0.2)
                continue
            log.warning("rebuilding the vector file from the database: %s", e)
    if faiss is None or faiss.dim != info.dim or faiss.index_type != info.index_type:
        faiss, meta = FaissIndex(info.dim, info.index_type), {}
    if meta.get("generation") == generation and len(faiss) == store.counts()["vectors"]:
        return faiss, generation
    db_ids = store.vector_ids()
    extra = np.setdiff1d(faiss.ids(), db_ids)
    missing = np.setdiff1d(db_ids, faiss.ids())
    log.info("syncing vectors with the database: +%d -%d", len(missing), len(extra))
    if len(extra):
        faiss.remove(extra)
    if len(missing):
        ids, mat, _ = store.vectors(missing, dim=info.dim)
        faiss.add(ids, mat)
    with can_save() as free:
        if free:
            save(store, path, faiss)
    return faiss, generation


def save(store: Store, path: Path, faiss: FaissIndex) -> None:
    """Write the FAISS file with a sidecar naming the generation and model it holds."""
    info = store.info()
    faiss.save(path, {
        "generation": store.generation(),
        "backbone": info.backbone,
        "weights_fingerprint": info.weights_fingerprint,
        "metric": info.metric,
    })

