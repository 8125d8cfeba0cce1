"""FAISS wrapper for cosine search over L2-normalised float32 vectors keyed by SQLite row ids.

FAISS is imported inside functions so that importing this module (and the CLI's --help)
stays instant.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import IndexCorruptError, VecsearchError
from .files import atomic_write

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw")
"""The FAISS structures an index can use: `--index-type` on the CLI, `index_type` everywhere else."""
HNSW_M = 32
HNSW_EF_SEARCH = 128
HNSW_EF_CONSTRUCTION = 80
SMALL_BATCH = 16  # fewer queries than this run on one OpenMP thread


def _faiss():
    """Import FAISS on first use only: it takes a noticeable time to load."""
    import faiss

    return faiss


def normalize(vectors, dtype=np.float32) -> np.ndarray:
    """Rows (the last axis) scaled to unit L2 norm, so inner product equals cosine.

    Zero rows stay zero instead of becoming NaN. Norms are computed in float64 so that
    large components cannot overflow to inf; `dtype=np.float64` keeps that precision
    (the k-NN classifier's exact re-ranking wants it).
    """
    x = np.asarray(vectors)
    norms = np.linalg.norm(x.astype(np.float64, copy=False), axis=-1, keepdims=True)
    out = np.zeros(x.shape, dtype=np.float64)
    np.divide(x, norms, out=out, where=norms > 0)
    return np.ascontiguousarray(out, dtype=dtype)


def norms(vectors) -> np.ndarray:
    """L2 length of each row (float32), as stored beside the unit vectors."""
    return np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=-1).astype(np.float32)


def sidecar_path(path: Path) -> Path:
    """Path of the JSON sidecar next to an index file (`x.faiss` -> `x.faiss.json`)."""
    path = Path(path)
    return path.with_suffix(path.suffix + ".json")


def _as_ids(ids) -> np.ndarray:
    """Turn ids (array, list, set, scalar) into a 1-D int64 array, refusing non-integers."""
    if isinstance(ids, (set, frozenset)) or (
        isinstance(ids, Iterable) and not isinstance(ids, (np.ndarray, list, tuple))
    ):
        ids = list(ids)
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise VecsearchError(f"ids must be integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr.reshape(-1), dtype=np.int64)
    if (arr < 0).any():
        # -1 is FAISS's "no result" marker; SQLite row ids handed to us are positive.
        raise VecsearchError("ids must be non-negative")
    return arr


class FaissIndex:
    """IndexIDMap2 over IndexFlatIP (exact inner product == cosine on normalised vectors).

    index_type="hnsw" swaps in IndexHNSWFlat for large collections: approximate, faster
    search, but FAISS cannot remove from it, so removals rebuild the graph from stored vectors.
    """

    def __init__(self, dim: int, index_type: str = "flat"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise VecsearchError(f"dim must be a positive integer, got {dim!r}")
        if index_type not in INDEX_TYPES:
            raise VecsearchError(f"Unknown index type {index_type!r}; choose one of: {', '.join(INDEX_TYPES)}.")
        self.dim = int(dim)
        self.index_type = index_type
        self._index = self._new_faiss_index()

    def _new_faiss_index(self):
        faiss = _faiss()
        if self.index_type == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        else:
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        # The Python wrapper keeps a reference to `inner`, so it outlives this scope.
        return faiss.IndexIDMap2(inner)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self.dim}, index_type={self.index_type!r}, count={len(self)})"

    def describe(self) -> str:
        """The FAISS structure in FAISS's own class names, for `stats`."""
        return f"IndexIDMap2({'IndexFlatIP' if self.index_type == 'flat' else 'IndexHNSWFlat'})"

    def _id_array(self) -> np.ndarray:
        """Ids in FAISS's internal order (row i of the storage has id _id_array()[i])."""
        return _faiss().vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def _as_matrix(self, vectors, what: str) -> np.ndarray:
        x = np.asarray(vectors)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2:
            raise VecsearchError(f"{what} must be 1-D or 2-D, got shape {x.shape}")
        if x.shape[1] != self.dim:
            raise VecsearchError(f"{what} have dimension {x.shape[1]}, index has {self.dim}")
        if x.dtype.kind not in "fiu":
            raise VecsearchError(f"{what} must be numeric, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise VecsearchError(f"{what} contain NaN or infinite values")
        return x

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under ids; an id already present is replaced, never duplicated.

        Within one call a repeated id keeps its last vector, matching replace semantics.
        """
        id_arr = _as_ids(ids)
        vecs = self._as_matrix(vectors, "vectors")
        if len(id_arr) != len(vecs):
            raise VecsearchError(f"got {len(id_arr)} ids for {len(vecs)} vectors")
        if len(id_arr) == 0:
            return
        _, first_in_reversed = np.unique(id_arr[::-1], return_index=True)
        if len(first_in_reversed) != len(id_arr):
            keep = np.sort(len(id_arr) - 1 - first_in_reversed)
            id_arr, vecs = id_arr[keep], np.ascontiguousarray(vecs[keep])
        existing = id_arr[np.isin(id_arr, self._id_array())]
        if len(existing):
            self.remove(existing)
        self._index.add_with_ids(vecs, id_arr)

    def remove(self, ids) -> int:
        """Remove ids and return how many were present; unknown ids are ignored."""
        id_arr = _as_ids(ids)
        if len(id_arr) == 0 or len(self) == 0:
            return 0
        if self.index_type == "flat":
            return int(self._index.remove_ids(np.unique(id_arr)))
        # HNSW has no removal in FAISS: rebuild from the vectors we keep.
        all_ids = self._id_array()
        keep = ~np.isin(all_ids, id_arr)
        removed = int(len(all_ids) - keep.sum())
        if removed == 0:
            return 0
        stored = self._index.index.reconstruct_n(0, len(all_ids))
        rebuilt = self._new_faiss_index()
        if keep.any():
            rebuilt.add_with_ids(np.ascontiguousarray(stored[keep]), all_ids[keep])
        self._index = rebuilt
        logger.debug("rebuilt hnsw index without %d ids (%d left)", removed, len(self))
        return removed

    def ids(self) -> np.ndarray:
        """All ids as a sorted int64 array."""
        return np.sort(self._id_array())

    def reconstruct(self, id: int) -> np.ndarray:
        """The stored vector of `id`; KeyError if the id is not in the index."""
        try:
            return self._index.reconstruct(int(id))
        except RuntimeError:
            raise KeyError(id) from None

    def search(
        self, queries: np.ndarray, k: int, exclude: set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine for each query row: (scores float32 (n, k'), ids int64 (n, k')).

        Rows are ordered by (-score, id) so ties are deterministic. k' = min(k, len(self)),
        narrowed further to the widest row when fewer results exist (e.g. after `exclude`);
        shorter rows are padded with id -1 and score -inf, which callers filter out.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise VecsearchError(f"k must be a positive integer, got {k!r}")
        q = self._as_matrix(queries, "queries")
        n, total = len(q), len(self)
        if total == 0 or n == 0:
            return np.empty((n, 0), dtype=np.float32), np.empty((n, 0), dtype=np.int64)
        excluded = _as_ids(exclude) if exclude else np.empty(0, dtype=np.int64)
        # Over-fetch so that dropping excluded ids still leaves k results.
        fetch = min(int(k) + len(excluded), total)
        scores, found = self._search(q, fetch)
        invalid = (found < 0) | np.isin(found, excluded)
        scores = np.where(invalid, -np.inf, scores).astype(np.float32)
        found = np.where(invalid, -1, found).astype(np.int64)
        # lexsort: last key is primary. Invalid entries last, then best score, then lowest id.
        order = np.lexsort((found, -scores, invalid), axis=-1)
        scores = np.take_along_axis(scores, order, axis=1)
        found = np.take_along_axis(found, order, axis=1)
        width = min(int(k), total, int((found >= 0).sum(axis=1).max()))
        return np.ascontiguousarray(scores[:, :width]), np.ascontiguousarray(found[:, :width])

    def _search(self, q: np.ndarray, fetch: int):
        # OpenMP threads only pay off for batches: a single query over 10k x 2048 took
        # 6.2 ms on one thread vs 7.0 ms with the default two here, and under a threaded
        # server several OpenMP teams oversubscribe the cores. The count is per calling
        # thread, so setting and restoring it is safe under concurrency.
        if len(q) >= SMALL_BATCH:
            return self._index.search(q, fetch)
        faiss = _faiss()
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._index.search(q, fetch)
        finally:
            faiss.omp_set_num_threads(before)

    def save(self, path: Path, meta: dict) -> None:
        """Write the index and then its JSON sidecar, each atomically.

        The sidecar goes last so a reader that sees a sidecar generation also sees its index.
        """
        faiss = _faiss()
        path = Path(path)
        sidecar = dict(meta or {})
        sidecar.update(
            dim=self.dim,
            index_type=self.index_type,
            count=len(self),
            faiss_version=faiss.__version__,
            saved_at=datetime.now(timezone.utc).isoformat(),
        )
        try:
            # Serialise before touching disk so unserialisable meta cannot leave a half save.
            text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
        except (TypeError, ValueError) as exc:
            raise VecsearchError(f"index metadata is not JSON-serialisable: {exc}") from exc

        atomic_write(path, lambda tmp: faiss.write_index(self._index, str(tmp)))
        atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        logger.debug("saved %r to %s", self, path)

    @classmethod
    def load(cls, path: Path) -> tuple["FaissIndex", dict]:
        """Read an index saved by `save` and its sidecar meta, checking they agree."""
        faiss = _faiss()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(2, "vector index not found", str(path))
        meta = cls.read_meta(path)
        if meta is None:
            raise IndexCorruptError(f"vector index {path} has no sidecar {sidecar_path(path)}")
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "read failed"
            raise IndexCorruptError(f"vector index {path} is unreadable: {detail}") from exc

        if not isinstance(raw, faiss.IndexIDMap2):
            raise IndexCorruptError(f"vector index {path} is a {type(raw).__name__}, not IndexIDMap2")
        inner = faiss.downcast_index(raw.index)
        if isinstance(inner, faiss.IndexFlatIP):
            index_type = "flat"
        elif isinstance(inner, faiss.IndexHNSWFlat) and inner.metric_type == faiss.METRIC_INNER_PRODUCT:
            index_type = "hnsw"
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            raise IndexCorruptError(f"vector index {path} wraps an unsupported {type(inner).__name__}")

        problems = []
        if meta.get("dim") != raw.d:
            problems.append(f"dim {meta.get('dim')!r} in sidecar vs {raw.d} in index")
        if meta.get("count") != raw.ntotal:
            problems.append(f"count {meta.get('count')!r} in sidecar vs {raw.ntotal} in index")
        if meta.get("index_type") != index_type:
            problems.append(f"index_type {meta.get('index_type')!r} in sidecar vs {index_type!r} in index")
        if problems:
            raise IndexCorruptError(
                f"vector index {path} does not match its sidecar: {'; '.join(problems)}"
            )

        index = cls.__new__(cls)
        index.dim, index.index_type, index._index = int(raw.d), index_type, raw
        logger.debug("loaded %r from %s", index, path)
        return index, meta

    @staticmethod
    def read_meta(path: Path) -> dict | None:
        """Sidecar contents only, without touching the index file: cheap enough for reload checks.

        None when no sidecar exists; IndexCorruptError when it is not a JSON object.
        """
        side = sidecar_path(Path(path))
        try:
            text = side.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise IndexCorruptError(f"index sidecar {side} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise IndexCorruptError(f"index sidecar {side} does not hold a JSON object")
        return meta
