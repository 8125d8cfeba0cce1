"""The live searcher: built, published, refreshed and rebuilt in step with the database.

The database is the source of truth; `vectors.faiss` is a search structure derived from it.
Every commit bumps the database's generation, and the structure's sidecar records the
generation it holds, so a reader (or the next run after a crash) can tell whether the file is
current and, if not, repair it from id sets alone: new content always gets a new id, so no id
ever changes its vector. `LiveSearch` holds what one open index searches with now and
publishes a new searcher only once it is complete, so concurrent searches never see half of one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..config import VECTORS_NAME
from ..errors import BadVectorError, IndexCorruptError, StructureError
from ..files import WriterLock
from ..store import Store
from .exact import Searcher, SlotMap, tune
from .index_types import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_TYPE,
    HNSW_M,
    TARGET_RECALL,
    IndexSpec,
    check_index_type,
    choose,
    parse_memory,
    train_size,
)
from .structure import FaissIndex, training_minimum

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Wanted = tuple[str, int | None]
"""A structure asked for and not yet built: (index type, memory budget or None for the recorded one)."""

ADD_CHUNK = 1 << 14
"""Vectors read from the shards per step when a structure is built or synced."""
PCA_TRAIN = 1 << 15
"""Vectors a PCA pre-transform learns from (about 16 per dimension at 2048-d)."""


@dataclass
class Hit:
    """One search result: its rank (from 1), the image's id and path, and the exact cosine."""

    rank: int
    id: int
    path: str
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


class LiveSearch:
    """What one open index searches with: the current searcher, the generation it holds, the
    lock that lets one of several threads reload it, and the structure asked for (`wanted`),
    built and recorded by the first write (or open) that can train it."""

    def __init__(
        self,
        directory: Path,
        store: Store,
        lock: WriterLock,
        *,
        index_type: str | None = None,
        max_memory: int | None = None,
        progress: Progress | None = None,
    ):
        self.path = Path(directory) / VECTORS_NAME
        self.store = store
        self.lock = lock  # the index's writer lock: repairs are saved only when it is free
        self.read_only = store.read_only
        # None: keep what the index records (flat for a new one).
        self.wanted: Wanted | None = (
            (index_type or DEFAULT_TYPE, max_memory) if index_type is not None or max_memory is not None else None
        )
        self.searcher: Searcher | None = None
        self.generation = -1  # the database generation the searcher holds
        # Server threads may refresh at once; one reloads, the others then see it current.
        self._refresh_lock = threading.Lock()
        if store.info() is not None:
            self.open(progress=progress)

    @property
    def faiss(self) -> FaissIndex | None:
        """The approximate FAISS structure, or None for exact (flat) search."""
        return self.searcher.faiss if self.searcher is not None else None

    def recorded_spec(self) -> IndexSpec | None:
        """The structure the index records as built (None before the first build)."""
        return current_spec(self.store)

    # -- publishing -----------------------------------------------------------------------
    def open(self, *, writer: bool = False, progress: Progress | None = None) -> bool:
        """Bring the searcher up to date with the database; True if its structure was rebuilt."""
        if os.path.lexists(self.path) and not self.path.is_file():
            raise IndexCorruptError(
                f"{self.path} is not a file: move it away and run again "
                "(the search structure is rebuilt from the stored vectors)."
            )
        can_save: Callable[[], AbstractContextManager[bool]]
        if writer:
            can_save = lambda: nullcontext(True)  # noqa: E731  (the writer holds the lock)
        else:
            can_save = _never if self.read_only else self.lock.if_free
        searcher, generation, rebuilt = open_searcher(
            self.store, self.path, self.searcher, can_save=can_save, writer=writer, progress=progress
        )
        # Publish only the finished searcher: concurrent searches hold the old one until here.
        self.searcher, self.generation = searcher, generation
        return rebuilt

    def refresh(self) -> bool:
        """Reload the vectors if another process changed the index; True if it did."""
        if self.searcher is None and self.store.info() is None:
            return False
        if self.store.generation() == self.generation:
            return False
        with self._refresh_lock:
            if self.store.generation() == self.generation:
                return False
            self.open()
            return True

    # -- the search structure: built first, recorded only then -----------------------------
    def convert(self, index_type: str, max_memory: int | None, *, progress: Progress | None = None) -> None:
        """Build `index_type` from the stored vectors, record it and publish it; the writer lock
        is held. StructureError (before any work where it can tell) leaves the index as it was."""
        self.searcher, self.generation = convert(self.store, self.path, index_type, max_memory, progress=progress)
        self.wanted = None

    def reindex(self, index_type: str | None, max_memory: int | str | None, *, progress: Progress | None = None) -> IndexSpec:
        """Rebuild (retrain and re-tune) the structure as `index_type` (else the recorded one) under the writer lock."""
        if index_type is not None:
            check_index_type(index_type)
        budget = parse_memory(max_memory)
        with self.lock.held():
            self.convert(index_type or self.store.require_info().index_type, budget, progress=progress)
        assert self.searcher is not None  # convert published one
        return self.searcher.spec

    def wanted_differs(self) -> bool:
        """Whether a structure is asked for that the index does not record yet."""
        info = self.store.info()
        return self.wanted is not None and (
            info is None
            or self.wanted[0] != info.index_type
            or (self.wanted[1] is not None and self.wanted[1] != info.max_memory)
        )

    def check_wanted(self, n: int, dim: int) -> None:
        """Refuse, before a write's work, a structure asked for that could not be trained even on
        the `n` vectors the index would hold at most afterwards."""
        if self.wanted is not None and self.wanted_differs():
            index_type, budget = self.wanted
            info = self.store.info()
            structure_for(index_type, n, dim, budget if budget is not None else (info.max_memory if info else None))

    def convert_wanted(self, progress: Progress | None = None) -> None:
        """open_index's conversion: at once when the vectors there can train it; else left to the
        next write (`add`, `import_vectors`), which refuses before its work if it cannot either."""
        if self.wanted is None or not self.wanted_differs():
            self.wanted = None
            return
        index_type, budget = self.wanted
        info = self.store.require_info()
        try:
            self.check_wanted(self.store.counts()["vectors"], info.dim)
        except StructureError as e:
            if e.needed is None:
                raise  # a factory string FAISS rejects, a budget too small: no write changes that
            log.info("%s; it is built by the next write that brings enough vectors", e)
            return
        log.info("converting %s from %s to %s", self.path.parent, info.index_type, index_type)
        with self.lock.held():
            self.convert(index_type, budget, progress=progress)

    def after_write(self) -> bool:
        """Bring the search structure in step after a write (the writer lock is held), as the
        structure asked for when one is pending; True if it was rebuilt because it was outgrown."""
        if self.wanted is not None and self.wanted_differs():
            index_type, budget = self.wanted
            try:
                self.convert(index_type, budget)
                return False
            except StructureError as e:
                # The vectors are committed; the structure the index had keeps answering.
                log.warning("%s The index keeps its %s search structure.", e, self.store.require_info().index_type)
        return self.open(writer=True)

    # -- searching ------------------------------------------------------------------------
    def query(self, q: np.ndarray) -> np.ndarray:
        """A query vector checked against the current searcher's dimension (refreshed first)."""
        self.refresh()
        q = np.asarray(q, np.float32)
        if self.searcher is None:
            self.store.require_info()  # an index without images: its own error
        assert self.searcher is not None  # an index with images always has one
        return check_query(q, self.searcher.dim)

    def search(
        self,
        q: np.ndarray,
        k: int,
        *,
        exclude: set[int] | None = None,
        allowed: np.ndarray | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The k best hits for one checked query (`query`), only `allowed` ids when given, each
        at least `min_score`; an image deleted since the search is skipped."""
        if allowed is not None and not len(allowed):
            return []
        assert self.searcher is not None
        scores, ids = self.searcher.search(q.reshape(1, -1), k, exclude=exclude, allowed=allowed)
        pairs = [
            (int(i), float(s))
            for i, s in zip(ids[0], scores[0], strict=True)
            if i >= 0 and (min_score is None or s >= float(min_score))
        ]
        recs = self.store.images(i for i, _ in pairs)
        hits = [(i, s) for i, s in pairs if i in recs]  # one deleted in between is skipped
        return [Hit(rank=n + 1, id=i, path=recs[i].path, score=s) for n, (i, s) in enumerate(hits)]


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
        raise StructureError(
            f"The {named} search structure cannot be trained on {n} vectors: {what} needs at least "
            f"{need}. Use flat (exact search) or hnsw (no training) until the index holds {need}.",
            option="index_type",
            needed=need,
        )
    return spec


def build(
    store: Store, slot_map: SlotMap, index_type: str, max_memory: int | None, *, progress: Progress | None = None
) -> tuple[FaissIndex | None, IndexSpec]:
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
    faiss = FaissIndex(
        dim,
        "hnsw" if spec.factory == f"HNSW{HNSW_M}" and spec.metric == "ip" else spec.factory,
        metric=spec.metric,
        params=spec.params,
    )
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
        staged = faiss.train_staged(
            store.shards.read(small),
            (store.shards.read(sample[i : i + ADD_CHUNK // 4]) for i in range(0, len(sample), ADD_CHUNK // 4)),
        )
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


def convert(
    store: Store, path: Path, index_type: str, max_memory: int | None, *, progress: Progress | None = None
) -> tuple[Searcher, int]:
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


def open_searcher(
    store: Store,
    path: Path,
    current: Searcher | None,
    *,
    can_save: Callable[[], AbstractContextManager[bool]],
    writer: bool = False,
    progress: Progress | None = None,
) -> tuple[Searcher, int, bool]:
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
    # `stale` holds whenever spec is None; the `spec is not None` tests below only say so to mypy.
    grown = spec is not None and not stale and writer and spec.needs_rebuild(len(smap))
    rebuild = stale or grown
    if not rebuild and spec is not None and not spec.exact and faiss is None:
        faiss = _load_structure(path, spec)
        rebuild = faiss is None
    changed = rebuild
    built, note = None, None
    if rebuild:
        if spec is not None and spec.index_type == info.index_type:
            log.warning(
                "rebuilding the %s search structure of %s (%s)",
                info.index_type,
                path.parent,
                "the collection outgrew it" if grown else "missing or damaged",
            )
        try:
            new_faiss, new_spec = build(store, smap, info.index_type, info.max_memory, progress=progress)
            built = Searcher(store.shards, smap, new_spec, new_faiss)
            _tuned(built)
        except StructureError as e:
            kept = _load_structure(path, spec) if grown and spec is not None and not spec.exact and faiss is None else faiss
            if grown and spec is not None and (spec.exact or kept is not None):
                # The collection outgrew it, but it still answers: keep it, kept in step.
                log.warning("%s Keeping the structure built for %d vectors.", e, spec.built_for)
                faiss, rebuild, changed = kept, False, False
            else:
                note = (
                    f"The index records a structure it cannot build. {e} Meanwhile it searches exactly (a scan "
                    "of the stored vectors); `vecsearch reindex --index-type flat` records that and ends this warning."
                )
                if current is None or current.note != note:
                    log.warning("%s", note)
                built = Searcher(store.shards, smap, choose("flat", len(smap), info.dim))
                built.note = note
                faiss, rebuild, changed = None, False, False
    if built is not None:
        searcher, faiss, spec = built, built.faiss, built.spec
    else:
        assert spec is not None, "without a new build the recorded spec was kept, so there is one"
        if faiss is not None:
            lock = current.lock.writing() if current is not None and current.faiss is faiss else _no_lock()
            with lock:
                changed = _sync(store, faiss, smap)
        if current is not None and current.faiss is faiss and current.note is None:
            searcher = current
            with searcher.lock.writing():
                searcher.map = smap
        else:
            searcher = Searcher(store.shards, smap, spec, faiss)
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


@contextmanager
def _never() -> Iterator[bool]:
    """`can_save` of a read-only index: the repaired vector file is kept in memory only."""
    yield False


def save(store: Store, path: Path, faiss: FaissIndex, spec: IndexSpec) -> None:
    """Write the structure with a sidecar naming the generation, model and spec it holds."""
    info = store.require_info()
    faiss.save(
        path,
        {
            "generation": store.generation(),
            "backbone": info.backbone,
            "weights_fingerprint": info.weights_fingerprint,
            "metric": info.metric,
            "spec": spec.to_dict(),
        },
    )


def check_query(q: np.ndarray | Sequence[float], dim: int, row: int | None = None) -> np.ndarray:
    """One query vector as a unit float32 row: the wrong dimension, NaN/Inf or all zeros is a
    BadVectorError saying which (cosine needs a direction; a NaN would poison every score)."""
    where = "" if row is None else f" (vector {row})"
    q = np.asarray(q, np.float32)
    if q.ndim != 1 and not (q.ndim == 2 and q.shape[0] == 1):
        raise BadVectorError(f"A query is one vector of {dim} numbers{where}; got an array of shape {q.shape}.")
    q = q.reshape(-1)
    if q.shape[0] != dim:
        raise BadVectorError(f"Query vector{where} has {q.shape[0]} dimensions; the index has {dim}.")
    if not np.isfinite(q).all():
        raise BadVectorError(f"Query vector{where} holds NaN or infinite values.")
    n = float(np.linalg.norm(q.astype(np.float64)))
    if n == 0.0 or not np.isfinite(n):
        raise BadVectorError(f"Query vector{where} is all zeros: it has no direction to compare by cosine.")
    return (q / n).astype(np.float32) if abs(n - 1.0) > 1e-6 else q
