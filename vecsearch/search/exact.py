"""Exact cosine top-k over the stored vectors: a scan (flat), or re-ranking an approximate
structure's candidates against the full vectors.

Either way every score returned is the exact cosine of the stored float32 vectors, so a
compressed structure changes which candidates are looked at, never the scores or their
order. Only vectors the database currently points at are returned: a structure may still
hold ids removed since (HNSW cannot remove), and they are dropped here.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from ..errors import VecsearchError
from ..store.shards import Shards
from ..vectors import normalize
from .index_types import IndexSpec
from .structure import FaissIndex

SCAN_ROWS = 1 << 13
"""Rows scored per step of an exact scan: 64 MiB of 2048-d float32 mapped at a time."""
RERANK_BYTES = 64 << 20
"""Candidate vectors held at once while re-ranking a batch of queries."""
SUBSET_EXACT = 1024
"""A filtered search over at most this many images scores each of them exactly, whatever the index."""
EXACT_COST_RATIO = 1.0
"""Above SUBSET_EXACT, a filtered search on an approximate structure scores the subset
exactly when that reads fewer rows than re-ranking the candidates it would need: s rows
exactly, against about count * n / s candidates (each read alike), so exact while
s^2 <= EXACT_COST_RATIO * count * n. At 1M vectors and 100 re-ranked: up to 10,000 images."""
FULL_SCAN_SHARE = 10
"""An exact filtered search over a subset holding at least 1/FULL_SCAN_SHARE of the images
reads every row in order (masking the rest) instead of picking the subset's rows. Measured
over 20,000 2048-d vectors in the page cache (2 busy cores): picking 1% / 5% / 10% / 25% of
the rows took 1.9 / 13 / 26 / 52 ms a query, the masked scan of all 19-27 ms."""


class SlotMap:
    """Which image id lives in which shard slot (the database's, as of one generation)."""

    def __init__(self, ids: np.ndarray, slots: np.ndarray, next_slot: int):
        self.ids = np.asarray(ids, np.int64)  # ascending
        self.slots = np.asarray(slots, np.int64)
        self.next_slot = int(next_slot)
        self.id_of_slot = np.full(self.next_slot, -1, np.int64)
        if len(self.slots):
            self.id_of_slot[self.slots] = self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ids; -1 for ids not (or no longer) in the database."""
        ids = np.asarray(ids, np.int64)
        if not len(self.ids):
            return np.full(ids.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, self.slots[pos], -1)


class RWLock:
    """Many searches at once, or one writer (a refresh adding vectors) alone."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def reading(self):
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def writing(self):
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Searcher:
    """Top-k by exact cosine over one index's stored vectors (see the module docstring)."""

    def __init__(self, shards: Shards, slot_map: SlotMap, spec: IndexSpec, faiss: FaissIndex | None = None):
        if not spec.exact and faiss is None:
            raise VecsearchError(f"A {spec.factory} index needs its FAISS structure.")
        self.shards = shards
        self.map = slot_map
        self.spec = spec
        self.faiss = faiss
        self.lock = RWLock()
        # Why this scans exactly where the index records a structure it cannot build; else None.
        self.note: str | None = None

    @property
    def dim(self) -> int:
        return self.shards.dim

    def __len__(self) -> int:
        return len(self.map)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: set[int] | None = None,
        rerank: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores (n, k'), ids (n, k')) best first, ties by id; short rows padded with -inf / -1.

        `rerank` overrides how many approximate candidates are re-scored (for tuning).
        `allowed` (image ids) restricts the results to those ids: still the exact top k of
        that subset, as long as it holds k images (see `_search_within`).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise VecsearchError(f"k must be a positive integer, got {k!r}")
        q = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        excluded = np.fromiter((int(i) for i in exclude or ()), np.int64)
        with self.lock.reading():
            if allowed is not None:
                return self._search_within(q, int(k), np.setdiff1d(np.asarray(allowed, np.int64), excluded), rerank)
            if self.spec.exact or self.faiss is None:
                return self._scan(q, int(k), excluded)
            return self._rerank(q, int(k), excluded, rerank or self.spec.rerank_count(k))

    def _search_within(self, q: np.ndarray, k: int, allowed: np.ndarray, rerank: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Top k among the `allowed` ids (unique, ascending).

        A small subset (see EXACT_COST_RATIO), or any on a flat index, is scored exactly.
        For a large one, a plain HNSW or IVF structure searches with a FAISS selector
        (only allowed ids, the effort raised for the share that passes) and its candidates
        are re-ranked exactly; other structures, or a query still short of k results,
        score the subset exactly. So a filter that k images pass always gives k results.
        """
        slots = self.map.slots_of(allowed)
        live = slots >= 0
        ids, slots = allowed[live], slots[live]
        if not len(ids):
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
        count = rerank or self.spec.rerank_count(k)
        if (
            self.spec.exact
            or self.faiss is None
            or len(ids) <= SUBSET_EXACT
            or len(ids) ** 2 <= EXACT_COST_RATIO * count * len(self.map)
        ):
            return self._exact_within(q, k, ids, slots)
        # As many candidates from the subset as an unfiltered search re-ranks, so recall matches.
        want = min(max(count, k), len(ids))
        if self.faiss.takes_selector:  # filter inside FAISS
            scores, found = self._rerank(q, k, np.empty(0, np.int64), want, allowed=ids, within=True)
            top = min(k, len(ids))
            if found.shape[1] >= top and (found[:, :top] >= 0).all():
                return scores, found
        # A PCA or refinement in front takes no selector, and asking it for more candidates
        # finds the wrong ones: an IVF keeps to the lists near the query, while the nearest
        # images that pass a filter may lie in others (recall@10 0.36 measured, 10% filter).
        return self._exact_within(q, k, ids, slots)

    def _exact_within(self, q: np.ndarray, k: int, ids: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(ids) * FULL_SCAN_SHARE >= len(self.map):
            return self._scan(q, k, np.empty(0, np.int64), allowed=ids)  # reading in order beats picking rows
        return self._scan_subset(q, k, ids, slots)

    def _scan_subset(self, q: np.ndarray, k: int, ids: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over some images: their vectors read in slot order, a bounded block at a time."""
        order = np.argsort(slots, kind="stable")
        ids, slots = ids[order], slots[order]
        n = len(q)
        best_s = np.full((n, 0), -np.inf, np.float32)
        best_i = np.full((n, 0), -1, np.int64)
        for start in range(0, len(ids), SCAN_ROWS):
            rows = self.shards.read(slots[start : start + SCAN_ROWS])
            part = ids[start : start + SCAN_ROWS]
            scores = q @ rows.T
            del rows
            dead = ~np.isfinite(scores).all(axis=0)  # a damaged stored vector is never a result
            if dead.any():
                scores[:, dead] = -np.inf
            best_s, best_i = _merge(best_s, best_i, scores, np.broadcast_to(part, scores.shape), k)
        return _finish(best_s, best_i, k)

    def _scan(
        self, q: np.ndarray, k: int, excluded: np.ndarray, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact search: score every committed slot, a bounded block at a time (only `allowed` ids, if given)."""
        n = len(q)
        best_s = np.full((n, 0), -np.inf, np.float32)
        best_i = np.full((n, 0), -1, np.int64)
        id_of_slot = self.map.id_of_slot
        end = self.map.next_slot
        for step in range(0, end, SCAN_ROWS):  # one bounded mapping at a time, dropped after use
            for start, rows in self.shards.read_range(step, min(step + SCAN_ROWS, end)):
                ids = id_of_slot[start : start + len(rows)]
                scores = q @ np.asarray(rows).T  # (n, rows)
                del rows
                dead = (ids < 0) | np.isin(ids, excluded) | ~np.isfinite(scores).all(axis=0)  # damaged rows too
                if allowed is not None:
                    dead |= ~np.isin(ids, allowed)
                if dead.any():
                    scores[:, dead] = -np.inf
                best_s, best_i = _merge(best_s, best_i, scores, np.broadcast_to(ids, scores.shape), k)
        return _finish(best_s, best_i, k)

    def _rerank(
        self, q: np.ndarray, k: int, excluded: np.ndarray, count: int, allowed: np.ndarray | None = None, within: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from the structure, re-scored exactly against the stored vectors.

        Queries go in blocks so the candidates' vectors in memory stay near RERANK_BYTES.
        Candidates not in `allowed` (ascending ids), when given, are dropped before scoring;
        with `within`, the structure itself keeps to them (a FAISS selector,
        `FaissIndex.search_within`).
        """
        assert self.faiss is not None, "only a structure's candidates are re-ranked; callers scan without one"
        fetch = min(len(self.faiss), count + len(excluded))
        if fetch == 0:
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
        block = max(1, RERANK_BYTES // (fetch * self.dim * 4))
        if len(q) > block:
            parts = [self._rerank(q[i : i + block], k, excluded, count, allowed, within) for i in range(0, len(q), block)]
            width = max(p[0].shape[1] for p in parts)
            pad = lambda a, v: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=v)  # noqa: E731
            return (
                np.concatenate([pad(s_, -np.inf) for s_, _ in parts]).astype(np.float32),
                np.concatenate([pad(i_, -1) for _, i_ in parts]),
            )
        if within:
            assert allowed is not None, "a search within is asked only with the allowed ids"
            kept = self.faiss.search_within(q, fetch, allowed)
            assert kept is not None, "a search within is asked only of a structure that takes_selector"
            cand = kept
        else:
            _, cand = self.faiss.search(q, fetch)
        slots = self.map.slots_of(cand.reshape(-1)).reshape(cand.shape)
        dead = (cand < 0) | (slots < 0) | np.isin(cand, excluded)
        if allowed is not None:
            dead |= ~np.isin(cand, allowed)
        unique, inverse = np.unique(np.where(dead, -1, slots), return_inverse=True)
        live = unique >= 0
        vecs = np.zeros((len(unique), self.dim), np.float32)
        if live.any():
            vecs[live] = self.shards.read(unique[live])
        inverse = inverse.reshape(cand.shape)
        scores = np.einsum("nd,nrd->nr", q, vecs[inverse]).astype(np.float32)
        dead |= ~np.isfinite(scores)  # a damaged stored vector is never a result
        scores[dead] = -np.inf
        ids = np.where(dead, -1, cand)
        best_s, best_i = _merge(np.full((len(q), 0), -np.inf, np.float32), np.full((len(q), 0), -1, np.int64), scores, ids, k)
        return _finish(best_s, best_i, k)


def _merge(best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int):
    """Keep the k best of the running best and a new block, per row, ordered by (-score, id)."""
    s = np.concatenate([best_s, scores], axis=1)
    i = np.concatenate([best_i, ids], axis=1)
    if s.shape[1] > k:
        # Everything scoring at least each row's k-th best survives, ties included, so the
        # id tie-break below is exact; the rest is dropped before the full sort.
        kth = -np.partition(-s, k - 1, axis=1)[:, k - 1 : k]
        keep = s >= kth
        width = int(keep.sum(axis=1).max())
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        s, i = np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)
    tie = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((tie, -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def _finish(best_s: np.ndarray, best_i: np.ndarray, k: int):
    valid = (best_i >= 0) & np.isfinite(best_s)
    best_i = np.where(valid, best_i, -1)
    best_s = np.where(valid, best_s, -np.inf).astype(np.float32)
    width = min(k, int(valid.sum(axis=1).max())) if len(best_i) else 0
    return np.ascontiguousarray(best_s[:, :width]), np.ascontiguousarray(best_i[:, :width])


TUNE_QUERIES = 200
TUNE_K = 10


def tune(
    searcher: Searcher, target: float, *, queries: int = TUNE_QUERIES, k: int = TUNE_K, seed: int = 0
) -> tuple[dict, float | None]:
    """Search parameters reaching recall@k >= target against exact search, and the recall measured.

    Queries are stored vectors moved off their place by noise as large as the collection's
    own spread along each axis (a new photo near known ones, not a copy of one), so no
    outside data is needed. The cheapest setting that reaches the target wins; if none
    does, the best one tried. (params, recall); recall None when there is nothing to measure.
    """
    spec, faiss = searcher.spec, searcher.faiss
    n = len(searcher.map)
    if spec.exact or faiss is None or n < 2:
        return dict(spec.params), (1.0 if spec.exact else None)
    rng = np.random.default_rng(seed)
    qids = np.sort(rng.choice(searcher.map.ids, size=min(queries, n), replace=False))
    base = searcher.shards.read(searcher.map.slots_of(qids))
    qvecs = normalize(base + rng.standard_normal(base.shape).astype(np.float32) * base.std(axis=0, keepdims=True))
    exact = Searcher(searcher.shards, searcher.map, IndexSpec("flat", ""))
    _, truth = exact.search(qvecs, k)
    grid = _param_grid(faiss)
    best: tuple[dict, float] | None = None
    for params in grid:
        faiss.set_params(params)
        _, found = searcher.search(qvecs, k)
        got = recall_at(found, truth, k)
        if best is None or got > best[1] + 1e-9:
            best = (params, got)
        if got >= target:
            best = (params, got)
            break
    assert best is not None, "the parameter grid is never empty"
    faiss.set_params(best[0])
    return best[0], round(best[1], 4)


def _param_grid(faiss: FaissIndex) -> list[dict]:
    """Increasing search effort: nprobe for IVF structures, efSearch for HNSW, else nothing to set."""
    factory = faiss.factory
    if "IVF" in factory:
        import re

        match = re.search(r"IVF(\d+)", factory)
        assert match is not None, f"an IVF factory names its list count: {factory}"
        nlist = int(match.group(1))
        probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p <= nlist] or [1]
        # With a refinement stage, more candidates go through it before the exact re-ranking:
        # cheap (8-bit codes in RAM), and what decides recall where PQ ranks poorly.
        factors = (1, 4, 16, 64) if "Refine" in factory else (None,)
        return [{"nprobe": p} | ({"k_factor_rf": f} if f else {}) for f in factors for p in probes]
    if factory.startswith("HNSW"):
        return [{"efSearch": e} for e in (16, 32, 64, 128, 256, 512)]
    return [dict(faiss.params)]


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of each row's true top-k that was found in the first k."""
    hits = [
        len(set(f[:k].tolist()) & set(t[:k].tolist())) / max(1, min(k, int((t[:k] >= 0).sum())))
        for f, t in zip(found, truth, strict=False)
    ]
    return float(np.mean(hits)) if hits else 1.0


__all__ = ["Searcher", "SlotMap", "RWLock", "recall_at", "tune"]
