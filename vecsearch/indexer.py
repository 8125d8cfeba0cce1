"""Writing to an index: the incremental plan and chunked commits.

The database is the source of truth, vectors included. Every commit bumps its generation,
so a killed run loses at most one chunk and the next run resumes there; the search
structure derived from the vectors is brought in step afterwards (`search.live`).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import files, images
from .config import default_workers
from .embed_job import Embedder
from .errors import BadImageError, InputNotFoundError, NoImagesError
from .files import absolute
from .store import ImageRecord, Store

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

CHUNK_SIZE = 64
"""Images per commit: a killed run loses at most this many, and the next run resumes there."""
CHUNK_SECONDS = 10.0
"""...or this long, whichever comes first, so slow images still commit often."""
KEEP_DAYS = 30
"""Days the vector of a dropped image (removed, excluded, gone, or replaced by an edit) stays
findable by its content hash, so the same content coming back is not embedded again.

Why days, not "until the next reindex": the vector's row stays in the append-only shards
either way (nothing compacts them yet), so what is bounded is only its row in `kept_vectors`.
The cycles users meet -- `--exclude` then `--clear-exclude`, `remove` then `index`, an edit
undone, a disk unplugged for a while -- come back within days or weeks, and a reindex (which
only rebuilds the search structure) must not throw them away; a month bounds the table by a
month of churn. A future shard compaction must drop the kept rows whose slots it reclaims."""


@dataclass
class FailedImage:
    path: str
    reason: str
    new: bool = True  # False: it failed in an earlier run and is unchanged since (not worth re-listing)


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
    retrained: bool = False  # the search structure was rebuilt: the collection outgrew it
    repaired: int = 0  # stored vectors found damaged (checksum) and dropped, to be embedded again

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RemoveSummary:
    """What one `remove` did: the entries dropped, and the paths given that matched none."""

    removed: int = 0
    removed_paths: list[str] = field(default_factory=list)
    not_indexed: list[str] = field(default_factory=list)
    deleted_files: list[str] = field(default_factory=list)  # stored upload copies deleted with their entries

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """What a run must do per file, decided before any embedding."""

    stats: dict[Path, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    moves: list[tuple[int, dict]] = field(default_factory=list)  # (id, new fields): renamed or touched
    copies: list[tuple[int, dict]] = field(default_factory=list)  # (source id, new row): same content elsewhere
    revives: list[dict] = field(default_factory=list)  # new rows whose content has a kept vector (Store.kept_*)
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
            return not any(part.startswith(".") for part in path[len(prefix) :].split(os.sep))
    return False


def _hash_all(paths: list[Path]) -> list[str | None]:
    def one(p: Path) -> str | None:
        try:
            return files.file_sha256(p)
        except (OSError, BadImageError):
            return None  # the decoder will report why

    with ThreadPoolExecutor(default_workers()) as pool:
        return list(pool.map(one, paths))


def plan(
    store: Store, roots: list[Path], files: list[Path], summary: IndexSummary, rejected: Sequence[images.Found] = ()
) -> Plan:
    """Decide per file: unchanged, moved, copied, or to embed; and which entries are gone.

    Size + mtime first; only files that differ are hashed, and of those only the ones with
    the size of a known file (the others are new content), so a re-run of a large unchanged
    folder reads no image data and new photos are read once. `rejected` are things found that cannot be
    image files (a FIFO, a folder named x.jpg, a broken link): each becomes a failed row.
    Every entry under `roots` is reconciled with what is there now: one whose path the
    walk no longer finds as an image file is dropped, even if something else (a link to
    elsewhere, a folder, a text file) now has its name. Entries are dropped only under `roots`.
    """
    records = store.records()
    out = Plan()
    found = {str(f) for f in files} | {str(r.path) for r in rejected}
    for r in rejected:
        assert r.reason is not None, "rejected: what was found with why it cannot be an image file"
        rec = records.get(str(r.path))
        if rec is not None and rec.status == "failed" and rec.reason == r.reason:
            _count_existing(rec, summary)
            continue
        try:
            st = os.lstat(r.path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime_ns = 0, 0
        out.failures.append(
            {
                "path": str(r.path),
                "size": size,
                "mtime_ns": mtime_ns,
                "sha256": None,
                "width": None,
                "height": None,
                "status": "failed",
                "reason": r.reason,
            }
        )
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
    given_roots = [absolute(r) for r in roots]
    unseen = [r.path for r in rejected if r.unseen_below]
    # Not found but still there: only under a hidden folder the walk skips (or given itself),
    # or under a folder that could not be listed this time.
    gone_all = [
        rec
        for path, rec in records.items()
        if path not in found
        and is_under(path, given_roots)
        and not (unseen and is_under(path, unseen))
        and (_walked(path, given_roots) or not os.path.lexists(path))
    ]
    gone = {rec.sha256: rec for rec in gone_all if rec.sha256 and rec.status == "ok"}
    gone_ids = {rec.id for rec in gone_all}
    kept_sizes = store.kept_sizes() if candidates else set()
    if candidates and (records or kept_sizes):
        # A file can be a touched, moved, copied or returning one only if some record with a
        # hash, or a kept vector, has its size; others are new content for sure, so they are
        # read once (hashed while decoding), not twice. Records of unknown size (imported
        # without file facts) disable the filter.
        sizes = {rec.size for rec in records.values() if rec.sha256} | kept_sizes
        need = candidates if 0 in sizes else [f for f in candidates if out.stats[f][0] in sizes]
        shas = dict(zip(need, _hash_all(need), strict=False))
        known = store.ok_ids_by_sha([s for s in shas.values() if s])
        kept = store.kept_shas([s for s in shas.values() if s]) if kept_sizes else set()
        for f in candidates:
            sha = shas.get(f)
            rec = records.get(str(f))
            size, mtime_ns = out.stats[f]
            if sha and rec is not None and rec.sha256 == sha:  # touched, not changed
                out.moves.append((rec.id, {"size": size, "mtime_ns": mtime_ns}))
                _count_existing(rec, summary)
                continue
            src = gone.get(sha) if sha else None
            if sha and src is not None and rec is None:  # renamed or moved (src: only with a sha)
                del gone[sha]
                out.moves.append((src.id, {"path": str(f), "size": size, "mtime_ns": mtime_ns}))
                summary.reused += 1
                continue
            if sha and sha in known and known[sha] not in gone_ids:  # a copy: reuse its vector
                out.copies.append(
                    (
                        known[sha],
                        {
                            "path": str(f),
                            "size": size,
                            "mtime_ns": mtime_ns,
                            "sha256": sha,
                            "width": None,
                            "height": None,
                            "status": "ok",
                            "reason": None,
                        },
                    )
                )
                summary.reused += 1
                continue
            if sha and sha in kept:  # content indexed before (removed, excluded, edited away): its vector
                out.revives.append({"path": str(f), "size": size, "mtime_ns": mtime_ns, "sha256": sha})
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
        summary.failed.append(FailedImage(rec.path, rec.reason or "failed", new=False))


def commit(store: Store, **changes) -> None:
    """Write one chunk to the database and its shard files (one transaction)."""
    if any(changes.values()):
        store.apply(**changes)


def remove(store: Store, records: list[ImageRecord], summary: RemoveSummary, *, chunk_size: int = 4 * CHUNK_SIZE) -> None:
    """Drop these entries (vectors, labels and predictions with them), committed in chunks
    the way an indexing run commits its deletes; the caller holds the writer lock and then
    brings the search structure in step (it drops the ids the database no longer has)."""
    for i in range(0, len(records), chunk_size):
        part = records[i : i + chunk_size]
        commit(store, deletes=[r.id for r in part])
        summary.removed += len(part)
        summary.removed_paths.extend(r.path for r in part)
    summary.removed_paths.sort()


def run(
    store: Store,
    extractor: Callable[[], Embedder],
    roots: list[Path],
    files: list[Path],
    *,
    progress: Progress | None = None,
    chunk_size: int = CHUNK_SIZE,
    chunk_seconds: float = CHUNK_SECONDS,
    rejected: Sequence[images.Found] = (),
) -> IndexSummary:
    """Bring the index up to date with `files` (found under `roots`); the caller holds the writer lock.

    `rejected` (found, but no readable image file) are stored as failed rows with their
    reasons. `extractor` is called only when something needs embedding, so a re-run of an
    unchanged folder never builds the model.
    """
    started = time.perf_counter()
    summary = IndexSummary(total=len(files) + len(rejected))
    store.forget_kept(datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=KEEP_DAYS))
    todo = plan(store, roots, files, summary, rejected)
    commit(store, deletes=todo.deletes, moves=todo.moves, copies=todo.copies, revives=todo.revives, upserts=todo.failures)
    total = len(todo.to_embed)
    if progress:
        progress(0, total)
    if total:
        done = 0
        chunk: list[dict] = []
        last_commit = time.monotonic()
        for item in extractor().embed_files(todo.to_embed):
            size, mtime_ns = todo.stats[item.path]
            row = {
                "path": str(item.path),
                "size": size,
                "mtime_ns": mtime_ns,
                "sha256": item.sha256 or None,
                "width": item.width or None,
                "height": item.height or None,
            }
            if item.error is None:
                row.update(status="ok", reason=None, vector=item.vector, norm=item.norm)
                summary.indexed += 1
            else:
                row.update(status="failed", reason=item.error)
                summary.failed.append(FailedImage(str(item.path), item.error))
            chunk.append(row)
            done += 1
            if len(chunk) >= chunk_size or time.monotonic() - last_commit > chunk_seconds:
                commit(store, upserts=chunk)
                chunk, last_commit = [], time.monotonic()
            if progress:
                progress(done, total)
        commit(store, upserts=chunk)
    summary.failed.sort(key=lambda f: f.path)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def inputs(store: Store, roots: list[Path], globs: list[str]) -> tuple[list[Path], list[images.Found]]:
    """(image files to index, files found that are not images) under `roots`, minus `globs`.

    A folder (or file) that is gone but has entries is reconciled like any other: its entries
    are dropped. Only a path that is neither there nor indexed is a mistake.
    """
    gone = [r for r in roots if not os.path.lexists(r)]
    indexed = lambda r: store.info() is not None and store.has_under(str(r))  # noqa: E731
    for r in gone:
        if not indexed(r):
            raise InputNotFoundError(f"No such file or folder: {r}")
    found = list(images.scan([r for r in roots if r not in gone], exclude=globs))
    if not found and not gone and not any(indexed(r) for r in roots):
        raise NoImagesError(f"No image files found in {', '.join(map(str, roots))}.")
    return [f.path for f in found if f.reason is None], [f for f in found if f.reason is not None]


def forget_damaged(store: Store) -> int:
    """Forget stored vectors whose bytes changed on disk since written (CRC mismatch), so their
    images are embedded anew; how many."""
    damaged = store.damaged_vectors()
    if damaged:
        log.warning("%d stored vectors are damaged (checksum mismatch); their images are embedded again", len(damaged))
        store.forget_vectors(damaged)
    return len(damaged)


def records_to_remove(store: Store, roots: list[Path], missing: bool, summary: RemoveSummary) -> list[ImageRecord]:
    """The records under `roots` (and, with `missing`, every one whose file is gone), by id;
    roots with no entries are noted in `summary.not_indexed`."""
    ids: set[int] = set()
    for r in roots:
        under = store.ids_under([str(r)])
        if not len(under):
            summary.not_indexed.append(str(r))
        ids.update(under.tolist())
    records = list(store.iter_images(ids=np.array(sorted(ids), np.int64))) if ids else []
    if missing:
        chosen = {r.id for r in records}
        records += [r for r in store.iter_images() if r.id not in chosen and not os.path.lexists(r.path)]
    return sorted(records, key=lambda r: r.id)
