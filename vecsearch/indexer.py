"""Writing to an index: the incremental plan, chunked commits, and keeping FAISS in step.

The database is the source of truth, vectors included; `vectors.faiss` is a search
structure derived from it. Every commit bumps the database's generation, and the FAISS
sidecar records the generation it holds, so a reader (or the next run after a crash) can
tell whether the file is current and, if not, repair it from id sets alone: new content
always gets a new id, so no id ever changes its vector.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import files, images
from .config import default_workers
from .errors import BadImageError, IndexCorruptError, StructureError
from .extract import Extractor
from .files import absolute
from .index_types import DEFAULT_MAX_MEMORY, HNSW_M, TARGET_RECALL, IndexSpec, choose, train_size
from .search import Searcher, SlotMap, tune
from .store import ImageRecord, Store
from .vectors import FaissIndex, training_minimum

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

CHUNK_SIZE = 64
"""Images per commit: a killed run loses at most this many, and the next run resumes there."""
CHUNK_SECONDS = 10.0
"""...or this long, whichever comes first, so slow images still commit often."""
ADD_CHUNK = 1 << 14
"""Vectors read from the shards per step when a structure is built or synced."""
PCA_TRAIN = 1 << 15
"""Vectors a PCA pre-transform learns from (about 16 per dimension at 2048-d)."""
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
            return not any(part.startswith(".") for part in path[len(prefix):].split(os.sep))
    return False


def _hash_all(paths: list[Path]) -> list[str | None]:
    def one(p: Path) -> str | None:
        try:
            return files.file_sha256(p)
        except (OSError, BadImageError):
            return None  # the decoder will report why

    with ThreadPoolExecutor(default_workers()) as pool:
        return list(pool.map(one, paths))


def plan(store: Store, roots: list[Path], files: list[Path], summary: IndexSummary,
         rejected: list[images.Found] = ()) -> Plan:
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
    given_roots = [absolute(r) for r in roots]
    unseen = [r.path for r in rejected if r.unseen_below]
    # Not found but still there: only under a hidden folder the walk skips (or given itself),
    # or under a folder that could not be listed this time.
    gone_all = [rec for path, rec in records.items()
                if path not in found and is_under(path, given_roots) and not (unseen and is_under(path, unseen))
                and (_walked(path, given_roots) or not os.path.lexists(path))]
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
        shas = dict(zip(need, _hash_all(need)))
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


def remove(store: Store, records: list[ImageRecord], summary: RemoveSummary, *,
           chunk_size: int = 4 * CHUNK_SIZE) -> None:
    """Drop these entries (vectors, labels and predictions with them), committed in chunks
    the way an indexing run commits its deletes; the caller holds the writer lock and then
    brings the search structure in step (it drops the ids the database no longer has)."""
    for i in range(0, len(records), chunk_size):
        part = records[i : i + chunk_size]
        commit(store, deletes=[r.id for r in part])
        summary.removed += len(part)
        summary.removed_paths.extend(r.path for r in part)
    summary.removed_paths.sort()


def run(store: Store, extractor: Callable[[], Extractor], roots: list[Path], files: list[Path], *,
        progress: Progress | None = None, chunk_size: int = CHUNK_SIZE,
        chunk_seconds: float = CHUNK_SECONDS, rejected: list[images.Found] = ()) -> IndexSummary:
    """Bring the index up to date with `files` (found under `roots`); the caller holds the writer lock.

    `rejected` (found, but no readable image file) are stored as failed rows with their
    reasons. `extractor` is called only when something needs embedding, so a re-run of an
    unchanged folder never builds the model.
    """
    started = time.perf_counter()
    summary = IndexSummary(total=len(files) + len(rejected))
    store.forget_kept(datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=KEEP_DAYS))
    todo = plan(store, roots, files, summary, rejected)
    commit(store, deletes=todo.deletes, moves=todo.moves, copies=todo.copies, revives=todo.revives,
           upserts=todo.failures)
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
                commit(store, upserts=chunk)
                chunk, last_commit = [], time.monotonic()
            if progress:
                progress(done, total)
        commit(store, upserts=chunk)
    summary.failed.sort(key=lambda f: f.path)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


# -- the search structure, kept in step with the database -------------------------------
def current_spec(store: Store) -> IndexSpec | None:
    """The structure the index records as built (None before the first build)."""
    info = store.require_info()
    return IndexSpec.from_dict(json.loads(info.index_spec)) if info.index_spec else None


def structure_for(index_type: str, n: int, dim: int, max_memory: int | None) -> IndexSpec:
    """What `build` builds for n vectors, refused before any work (StructureError) when FAISS
    cannot build it or cannot train it on n vectors: the message says how many it needs."""
    spec = choose(index_type, n, dim, max_memory)
    if spec.exact:
        return spec
    need, what = training_minimum(spec.factory, dim, spec.metric)
    if n < need:
        named = spec.factory if spec.index_type == spec.factory else f"{spec.index_type} ({spec.factory})"
        raise StructureError(f"The {named} search structure cannot be trained on {n} vectors: {what} needs at least "
                             f"{need}. Use flat (exact search) or hnsw (no training) until the index holds {need}.",
                             option="index_type", needed=need)
    return spec


def build(store: Store, slot_map: SlotMap, index_type: str, max_memory: int | None, *,
          progress: Progress | None = None) -> tuple[FaissIndex | None, IndexSpec]:
    """Choose and build the structure for the current vectors: train on a sample, add in chunks, tune.

    Memory stays at the structure plus one chunk of vectors plus the training sample. A
    structure that cannot be built raises StructureError, before any work where that can
    be known (`structure_for`), and writes nothing either way.
    """
    info = store.require_info()
    n, dim = len(slot_map), info.dim
    spec = structure_for(index_type, n, dim, max_memory)
    spec.build_id = uuid.uuid4().hex
    if spec.exact:
        return None, spec
    t0 = time.perf_counter()
    faiss = FaissIndex(dim, "hnsw" if spec.factory == f"HNSW{HNSW_M}" and spec.metric == "ip" else spec.factory,
                       metric=spec.metric, params=spec.params)
    if not faiss.is_trained:
        need, _ = training_minimum(spec.factory, dim, spec.metric)
        # The budget may cap the sample below what the structure's k-means must see at least.
        size = max(train_size(spec.factory, n, dim, max_memory or DEFAULT_MAX_MEMORY), min(n, need))
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(slot_map.slots, size=size, replace=False)) if size < n else np.sort(slot_map.slots)
        log.info("training %s on %d of %d vectors", spec.factory, len(sample), n)
        # A PCA in front trains on a small part; what follows sees the whole sample, read in
        # chunks and kept only after PCA has shrunk it, so memory stays near the structure's.
        small = sample[:: max(1, len(sample) // PCA_TRAIN)]
        staged = faiss.train_staged(store.shards.read(small),
                                    (store.shards.read(sample[i : i + ADD_CHUNK // 4])
                                     for i in range(0, len(sample), ADD_CHUNK // 4)))
        if not staged:
            faiss.train(store.shards.read(sample))
    done = 0
    if progress:
        progress(0, n)
    for ids, vecs, _ in store.iter_vectors(chunk=ADD_CHUNK):
        faiss.add(ids, vecs)
        done += len(ids)
        if progress:
            progress(done, n)
    spec.memory_bytes = faiss.memory_bytes()
    log.info("built %s over %d vectors in %.1fs", spec.factory, n, time.perf_counter() - t0)
    return faiss, spec


def _tuned(searcher: Searcher) -> None:
    """Tune a just-built structure's search parameters to TARGET_RECALL (into its spec)."""
    try:
        searcher.spec.params, searcher.spec.recall = tune(searcher, TARGET_RECALL)
    except RuntimeError as e:  # FAISS refusing a search parameter or a search
        raise StructureError(f"Tuning {searcher.spec.factory} failed in FAISS: {e}") from None


def convert(store: Store, path: Path, index_type: str, max_memory: int | None, *,
            progress: Progress | None = None) -> tuple[Searcher, int]:
    """Build `index_type` from the stored vectors and record it only then: (searcher, generation).

    The caller holds the writer lock. A structure that cannot be built raises StructureError
    with the database and the saved structure as they were, so the index keeps searching
    with what it had. The file is saved before the database names it: a crash between the two
    leaves the database's structure (a build_id the file no longer has), rebuilt on the next open.
    """
    info = store.require_info()
    ids, slots, next_slot = store.slot_map()
    smap = SlotMap(ids, slots, next_slot)
    budget = max_memory if max_memory is not None else info.max_memory
    faiss, spec = build(store, smap, index_type, budget, progress=progress)
    searcher = Searcher(store.shards, smap, spec, faiss)
    _tuned(searcher)
    if faiss is not None:
        save(store, path, faiss, spec)
    store.set_index_type(index_type, max_memory, json.dumps(spec.to_dict()))
    if faiss is None and path.exists():
        path.unlink()  # flat: the stored vectors are the structure
    return searcher, store.generation()


def open_searcher(store: Store, path: Path, current: Searcher | None, *, can_save: Callable[[], object],
                  writer: bool = False, progress: Progress | None = None) -> tuple[Searcher, int, bool]:
    """The searcher for the database's current state: (searcher, generation, rebuilt).

    `current` (already in memory) is brought up to date by adding and removing only what
    changed; otherwise the saved structure is loaded and synced the same way. It is
    rebuilt from the stored vectors when missing, damaged, of another type than the index
    records, or (by a `writer`, i.e. `vecsearch index`) when the collection outgrew what
    it was trained for. Repairs are saved when `can_save()` says the writer lock is free.

    A recorded structure that cannot be built (too few vectors to train it, e.g. recorded by
    an older vecsearch before its build failed) never makes the index unusable: the searcher
    scans the stored vectors exactly, records nothing, and says why in `Searcher.note`.
    """
    info = store.require_info()
    generation = store.generation()
    ids, slots, next_slot = store.slot_map()
    smap = SlotMap(ids, slots, next_slot)
    spec = current_spec(store)
    faiss = current.faiss if current is not None and current.spec == spec else None
    stale = spec is None or spec.index_type != info.index_type
    grown = not stale and writer and spec.needs_rebuild(len(smap))
    rebuild = stale or grown
    if not rebuild and not spec.exact and faiss is None:
        faiss = _load_structure(path, spec)
        rebuild = faiss is None
    changed = rebuild
    built, note = None, None
    if rebuild:
        if spec is not None and spec.index_type == info.index_type:
            log.warning("rebuilding the %s search structure of %s (%s)", info.index_type, path.parent,
                        "the collection outgrew it" if grown else "missing or damaged")
        try:
            new_faiss, new_spec = build(store, smap, info.index_type, info.max_memory, progress=progress)
            built = Searcher(store.shards, smap, new_spec, new_faiss)
            _tuned(built)
        except StructureError as e:
            kept = _load_structure(path, spec) if grown and not spec.exact and faiss is None else faiss
            if grown and (spec.exact or kept is not None):
                # The collection outgrew it, but it still answers: keep it, kept in step.
                log.warning("%s Keeping the structure built for %d vectors.", e, spec.built_for)
                faiss, rebuild, changed = kept, False, False
            else:
                note = (f"The index records a structure it cannot build. {e} Meanwhile it searches exactly (a scan "
                        "of the stored vectors); `vecsearch reindex --index-type flat` records that and ends this warning.")
                if current is None or current.note != note:
                    log.warning("%s", note)
                built = Searcher(store.shards, smap, choose("flat", len(smap), info.dim))
                built.note = note
                faiss, rebuild, changed = None, False, False
    if built is not None:
        searcher, faiss, spec = built, built.faiss, built.spec
    else:
        if faiss is not None:
            lock = current.lock.writing() if current is not None and current.faiss is faiss else _no_lock()
            with lock:
                changed = _sync(store, faiss, smap)
        searcher = current if current is not None and current.faiss is faiss and current.note is None else None
        if searcher is None:
            searcher = Searcher(store.shards, smap, spec, faiss)
        else:
            with searcher.lock.writing():
                searcher.map = smap
    if changed:
        with can_save() as free:
            if free:
                if faiss is not None:
                    save(store, path, faiss, spec)
                elif path.exists():
                    path.unlink()  # flat: the stored vectors are the structure
                store.set_index_spec(json.dumps(spec.to_dict()))
    return searcher, generation, rebuild


def _sync(store: Store, faiss: FaissIndex, smap: SlotMap) -> bool:
    """Add vectors the structure lacks and drop those the database no longer has; True if any."""
    have = faiss.ids()
    missing = np.setdiff1d(smap.ids, have)
    extra = np.setdiff1d(have, smap.ids)
    if len(extra):
        faiss.remove(extra)
    for i in range(0, len(missing), ADD_CHUNK):
        part = missing[i : i + ADD_CHUNK]
        faiss.add(part, store.shards.read(smap.slots_of(part)))
    if len(missing) or len(extra):
        log.info("synced the search structure with the database: +%d -%d", len(missing), len(extra))
    return bool(len(missing) or len(extra))


def _load_structure(path: Path, spec: IndexSpec) -> FaissIndex | None:
    """The saved structure if it is the one the database records, else None (it gets rebuilt)."""
    for attempt in range(2):
        try:
            faiss, meta = FaissIndex.load(path)
        except FileNotFoundError:
            return None
        except IndexCorruptError as e:
            # Maybe a save was between its two renames; look once more, then rebuild.
            if attempt == 0:
                time.sleep(0.2)
                continue
            log.warning("rebuilding the search structure: %s", e)
            return None
        if (meta.get("spec") or {}).get("build_id") != spec.build_id:
            log.info("the saved search structure is not the one the database records; rebuilding")
            return None
        return faiss
    return None


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def save(store: Store, path: Path, faiss: FaissIndex, spec: IndexSpec) -> None:
    """Write the structure with a sidecar naming the generation, model and spec it holds."""
    info = store.require_info()
    faiss.save(path, {
        "generation": store.generation(),
        "backbone": info.backbone,
        "weights_fingerprint": info.weights_fingerprint,
        "metric": info.metric,
        "spec": spec.to_dict(),
    })
