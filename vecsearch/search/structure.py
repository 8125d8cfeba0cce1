"""FAISS structures over unit vectors keyed by SQLite image ids.

`FaissIndex` wraps any structure FAISS builds from a factory string ("Flat", "HNSW32",
"PCA256,IVF1024,PQ64x8", ...): training, adding and removing by id, searching, and saving
atomically with a JSON sidecar that carries a checksum. For approximate structures the
index re-scores its candidates exactly (`exact.py`), so their scores need only rank.

FAISS is imported inside functions so that importing this module (and the CLI's --help)
stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import IndexCorruptError, StructureError, VecsearchError
from ..files import atomic_write
from .index_types import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, estimate_bytes

logger = logging.getLogger(__name__)

SMALL_BATCH = 16  # fewer queries than this run on one OpenMP thread


def _faiss():
    """Import FAISS on first use only: it takes a noticeable time to load."""
    import faiss

    return faiss


def sidecar_path(path: Path) -> Path:
    """Path of the JSON sidecar next to an index file (`x.faiss` -> `x.faiss.json`)."""
    path = Path(path)
    return path.with_suffix(path.suffix + ".json")


def _as_ids(ids) -> np.ndarray:
    """Turn ids (array, list, set, scalar) into a 1-D int64 array, refusing non-integers."""
    if isinstance(ids, (set, frozenset)) or (isinstance(ids, Iterable) and not isinstance(ids, (np.ndarray, list, tuple))):
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


IVF_FILTER_PROBES = 4
"""A filtered IVF search probes this many times nprobe / share lists (at most all of them)."""


class FaissIndex:
    """A FAISS structure over unit vectors, searched by cosine, keyed by int64 ids.

    `index_type` is "flat" (IndexFlatIP), "hnsw" (IndexHNSWFlat, M=32) or a FAISS factory
    string; `metric` "ip" or "l2" (on unit vectors, L2 order is cosine order; scores are
    returned as cosines either way). Structures that cannot add with ids are wrapped in
    IndexIDMap2; those that cannot remove (HNSW) are rebuilt from their own vectors when
    they can reconstruct them, else the removed ids stay inside, dead, and the caller's
    re-ranking drops them.
    """

    def __init__(self, dim: int, index_type: str = "flat", *, metric: str | None = None, params: dict | None = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise VecsearchError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.index_type = index_type
        self.factory = {"flat": "Flat", "hnsw": f"HNSW{HNSW_M}"}.get(index_type, index_type)
        if index_type in ("auto", "ivf-pq"):
            raise VecsearchError(f"Index type {index_type!r} is resolved to a factory string first (index_types.choose).")
        self.metric = metric or ("ip" if index_type in ("flat", "hnsw") else "l2")
        if self.metric not in ("ip", "l2"):
            raise VecsearchError(f"metric must be ip or l2, got {self.metric!r}")
        self.params = dict(params or {})
        self._index = self._new_faiss_index()
        self._ids = np.empty(0, np.int64)  # sorted ids inside, dead ones included
        self.set_params(self.params)

    def _new_faiss_index(self):
        faiss = _faiss()
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        if self.factory == "Flat":
            inner = faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)
        elif self.factory == f"HNSW{HNSW_M}":
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, metric)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            try:
                inner = faiss.index_factory(self.dim, self.factory, metric)
            except RuntimeError as e:
                raise StructureError(f"FAISS cannot build {self.factory!r}: {_faiss_message(e)}") from None
        if _native_ids(inner):
            return inner
        # The Python wrapper keeps a reference to `inner`, so it outlives this scope.
        return faiss.IndexIDMap2(inner)

    # -- what it is ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self.dim}, index_type={self.index_type!r}, count={len(self)})"

    def describe(self) -> str:
        """The FAISS structure in FAISS's own class names, for `stats`."""
        return _describe(self._index)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def set_params(self, params: dict) -> None:
        """Search parameters by name (nprobe, efSearch, ...), through FAISS's ParameterSpace."""
        faiss = _faiss()
        self.params = dict(params or {})
        inner = self._inner()
        for key, value in self.params.items():
            try:
                faiss.ParameterSpace().set_index_parameter(inner, key, value)
            except RuntimeError as e:
                raise VecsearchError(f"{self.factory} has no search parameter {key}: {_faiss_message(e)}") from None

    def _inner(self):
        faiss = _faiss()
        return faiss.downcast_index(self._index.index) if isinstance(self._index, faiss.IndexIDMap2) else self._index

    def memory_bytes(self) -> int:
        """Bytes the structure holds in RAM (its serialised size, a close measure)."""
        return int(_faiss().serialize_index(self._index).nbytes) if len(self) < 200_000 else self._estimated_bytes()

    def _estimated_bytes(self) -> int:
        return estimate_bytes(self.factory if self.factory != "Flat" else "", len(self), self.dim)

    # -- contents -------------------------------------------------------------------------
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

    def train(self, vectors: np.ndarray) -> None:
        """Train a structure that needs it (IVF, PQ, PCA) on a sample of the vectors."""
        if self.is_trained:
            return
        x = self._as_matrix(vectors, "training vectors")
        try:
            self._index.train(x)
        except RuntimeError as e:
            raise StructureError(f"Training {self.factory} on {len(x)} vectors failed: {_faiss_message(e)}") from None
        self.set_params(self.params)

    def train_staged(self, transform_sample: np.ndarray, chunks: Iterable[np.ndarray]) -> bool:
        """Train a structure behind a pre-transform (PCA) in two stages, to bound memory.

        The transform learns from a small sample; the structure behind it (IVF, PQ) from
        the larger `chunks`, kept only after the transform shrinks them (2048 -> 256 dims:
        8x less). False, doing nothing, when the structure has no pre-transform.
        """
        faiss = _faiss()
        top = faiss.downcast_index(self._index)
        if isinstance(top, faiss.IndexIDMap2):
            top = faiss.downcast_index(top.index)
        refine = top if isinstance(top, faiss.IndexRefine) else None
        outer = faiss.downcast_index(refine.base_index) if refine is not None else top
        if self.is_trained or not isinstance(outer, faiss.IndexPreTransform):
            return False
        x = self._as_matrix(transform_sample, "training vectors")
        if refine is not None:  # the 8-bit refinement learns each dimension's range from the small sample
            faiss.downcast_index(refine.refine_index).train(x)
        chain = [faiss.downcast_VectorTransform(outer.chain.at(i)) for i in range(outer.chain.size())]
        try:
            for vt in chain:
                if not vt.is_trained:
                    vt.train(x)
                x = vt.apply(x)
            parts = []
            for chunk in chunks:
                y = self._as_matrix(chunk, "training vectors")
                for vt in chain:
                    y = vt.apply(y)
                parts.append(y)
            inner = faiss.downcast_index(outer.index)
            inner.train(np.ascontiguousarray(np.concatenate(parts)))
        except RuntimeError as e:
            raise StructureError(f"Training {self.factory} failed: {_faiss_message(e)}") from None
        outer.is_trained = True
        if refine is not None:
            refine.is_trained = True
        self._index.is_trained = True  # an IndexIDMap2 wrapper keeps its own flag
        self.set_params(self.params)
        return True

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
        if not self.is_trained:
            raise VecsearchError(f"{self.factory} must be trained before vectors are added.")
        _, first_in_reversed = np.unique(id_arr[::-1], return_index=True)
        if len(first_in_reversed) != len(id_arr):
            keep = np.sort(len(id_arr) - 1 - first_in_reversed)
            id_arr, vecs = id_arr[keep], np.ascontiguousarray(vecs[keep])
        existing = id_arr[np.isin(id_arr, self._ids)]
        if len(existing):
            self.remove(existing, force=True)
        try:
            self._index.add_with_ids(vecs, id_arr)
        except RuntimeError as e:
            raise StructureError(f"Adding {len(vecs)} vectors to {self.factory} failed: {_faiss_message(e)}") from None
        self._ids = np.union1d(self._ids, id_arr)

    def remove(self, ids, *, force: bool = False) -> int:
        """Remove ids and return how many were present; unknown ids are ignored.

        A structure FAISS cannot remove from (HNSW) is rebuilt from its own vectors; one
        that cannot give them back either keeps them as dead entries unless `force`.
        """
        id_arr = np.intersect1d(_as_ids(ids), self._ids)
        if len(id_arr) == 0:
            return 0
        faiss = _faiss()
        try:
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(id_arr)))
        except RuntimeError:
            removed = self._rebuild_without(id_arr, force)
        self._ids = np.setdiff1d(self._ids, id_arr) if removed else self._ids
        return removed

    def _rebuild_without(self, gone: np.ndarray, force: bool) -> int:
        if self.factory not in ("Flat", f"HNSW{HNSW_M}"):
            # A trained structure rebuilt from its own (compressed) vectors would need training
            # again: the ids stay inside, dead, until the next rebuild; re-ranking drops them.
            if force:
                raise VecsearchError(f"{self.factory} cannot remove vectors; rebuild it (vecsearch reindex).")
            return 0
        all_ids = self._id_array()
        keep = ~np.isin(all_ids, gone)
        try:
            stored = self._index.index.reconstruct_n(0, len(all_ids))
        except RuntimeError:
            if force:
                raise VecsearchError(f"{self.factory} can neither remove nor reconstruct vectors; rebuild it.") from None
            return 0  # left inside as dead entries: re-ranking drops them
        rebuilt = self._new_faiss_index()
        if keep.any():
            rebuilt.add_with_ids(np.ascontiguousarray(stored[keep]), all_ids[keep])
        self._index = rebuilt
        self.set_params(self.params)
        logger.debug("rebuilt %s without %d ids (%d left)", self.factory, len(gone), len(self))
        return int(len(all_ids) - keep.sum())

    def _id_array(self) -> np.ndarray:
        """Ids in FAISS's internal order (row i of the storage has id _id_array()[i])."""
        faiss = _faiss()
        if isinstance(self._index, faiss.IndexIDMap2):
            return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
        return _ivf_ids(self._index)

    def ids(self) -> np.ndarray:
        """All ids inside as a sorted int64 array (dead ones of a structure that can't remove included)."""
        return self._ids.copy()

    def reconstruct(self, id: int) -> np.ndarray:
        """The stored vector of `id`; KeyError if the id is not in the index (or cannot be given back)."""
        try:
            return self._index.reconstruct(int(id))
        except RuntimeError:
            raise KeyError(id) from None

    # -- searching ------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, exclude: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
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
        if self.metric == "l2":  # squared distance between unit vectors -> cosine
            scores = 1.0 - scores / 2.0
        invalid = (found < 0) | np.isin(found, excluded)
        scores = np.where(invalid, -np.inf, scores).astype(np.float32)
        found = np.where(invalid, -1, found).astype(np.int64)
        # lexsort: last key is primary. Invalid entries last, then best score, then lowest id.
        order = np.lexsort((found, -scores, invalid), axis=-1)
        scores = np.take_along_axis(scores, order, axis=1)
        found = np.take_along_axis(found, order, axis=1)
        width = min(int(k), total, int((found >= 0).sum(axis=1).max()))
        return np.ascontiguousarray(scores[:, :width]), np.ascontiguousarray(found[:, :width])

    @property
    def takes_selector(self) -> bool:
        """Whether `search_within` can filter inside this structure (plain HNSW or IVF)."""
        faiss = _faiss()
        return isinstance(self._inner(), (faiss.IndexHNSW, faiss.IndexIVF))

    def search_within(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray | None:
        """Ids (n, k) of each query's nearest among the `allowed` ids only (-1 padded), or None
        when this structure takes no FAISS selector (a pre-transform or a refinement around it).

        A selector filters inside the search, so HNSW walks its graph and IVF its lists as
        usual and keeps only allowed ids. The effort grows by 1/share as fewer ids pass
        (efSearch from at least k; nprobe times IVF_FILTER_PROBES, up to every list), so
        about as many allowed candidates are met as an unfiltered search meets. Measured
        (scripts/bench_filters.py, 20k 2048-d, a 10% filter): recall@10 0.99 for HNSW,
        1.00 for IVF128,SQ8 (0.84 without the factor 4).
        """
        faiss = _faiss()
        inner = self._inner()
        share = max(len(allowed) / max(len(self), 1), 1e-6)
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
        if isinstance(inner, faiss.IndexHNSW):
            ef = int(self.params.get("efSearch", inner.hnsw.efSearch))
            # The graph search counts every node it visits against efSearch, allowed or not.
            params = faiss.SearchParametersHNSW(efSearch=int(min(np.ceil(max(ef, k) / share), len(self))), sel=sel)
        elif isinstance(inner, faiss.IndexIVF):
            nprobe = int(self.params.get("nprobe", inner.nprobe))
            # The nearest images that pass lie further out than the nearest of all: more lists.
            params = faiss.SearchParametersIVF(nprobe=int(min(inner.nlist, np.ceil(IVF_FILTER_PROBES * nprobe / share))), sel=sel)
        else:
            return None
        q = self._as_matrix(queries, "queries")
        _, found = self._search(q, min(int(k), len(self)), params)
        return np.asarray(found, np.int64)

    def _search(self, q: np.ndarray, fetch: int, params=None):
        # OpenMP threads only pay off for batches: a single query over 10k x 2048 took
        # 6.2 ms on one thread vs 7.0 ms with the default two here, and under a threaded
        # server several OpenMP teams oversubscribe the cores. The count is per calling
        # thread, so setting and restoring it is safe under concurrency.
        kw = {} if params is None else {"params": params}
        if len(q) >= SMALL_BATCH:
            return self._index.search(q, fetch, **kw)
        faiss = _faiss()
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._index.search(q, fetch, **kw)
        finally:
            faiss.omp_set_num_threads(before)

    # -- files ----------------------------------------------------------------------------
    def save(self, path: Path, meta: dict) -> None:
        """Write the index and then its JSON sidecar (with the file's CRC-32), each atomically.

        The sidecar goes last so a reader that sees a sidecar generation also sees its index.
        """
        faiss = _faiss()
        path = Path(path)
        sidecar = dict(meta or {})
        sidecar.update(
            dim=self.dim,
            index_type=self.index_type,
            factory=self.factory,
            metric=self.metric,
            params=self.params,
            count=len(self),
            faiss_version=faiss.__version__,
            saved_at=datetime.now(timezone.utc).isoformat(),
        )
        try:
            # Serialise before touching disk so unserialisable meta cannot leave a half save.
            json.dumps(sidecar)
        except (TypeError, ValueError) as exc:
            raise VecsearchError(f"index metadata is not JSON-serialisable: {exc}") from exc

        atomic_write(path, lambda tmp: faiss.write_index(self._index, str(tmp)))
        sidecar["crc32"] = _crc32(path)
        text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
        atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        logger.debug("saved %r to %s", self, path)

    @classmethod
    def load(cls, path: Path) -> tuple["FaissIndex", dict]:
        """Read an index saved by `save` and its sidecar meta, checking they agree (CRC-32 included)."""
        faiss = _faiss()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(2, "vector index not found", str(path))
        meta = cls.read_meta(path)
        if meta is None:
            raise IndexCorruptError(f"vector index {path} has no sidecar {sidecar_path(path)}")
        if "crc32" in meta and _crc32(path) != meta["crc32"]:
            raise IndexCorruptError(f"vector index {path} does not match the checksum in its sidecar")
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexCorruptError(f"vector index {path} is unreadable: {_faiss_message(exc)}") from exc
        index_type: str = meta.get("index_type") or ""  # none: refused below, with the other problems
        factory = meta.get("factory") or {"flat": "Flat", "hnsw": f"HNSW{HNSW_M}"}.get(index_type, "")
        inner = faiss.downcast_index(raw.index) if isinstance(raw, faiss.IndexIDMap2) else raw
        problems = []
        if index_type == "flat" and not isinstance(inner, faiss.IndexFlat):
            problems.append(f"a {type(inner).__name__} where the sidecar says flat")
        if index_type == "hnsw" and not isinstance(inner, faiss.IndexHNSWFlat):
            problems.append(f"a {type(inner).__name__} where the sidecar says hnsw")
        if meta.get("dim") != raw.d:
            problems.append(f"dim {meta.get('dim')!r} in sidecar vs {raw.d} in index")
        if meta.get("count") != raw.ntotal:
            problems.append(f"count {meta.get('count')!r} in sidecar vs {raw.ntotal} in index")
        if not index_type:
            problems.append("no index_type in the sidecar")
        if problems:
            raise IndexCorruptError(f"vector index {path} does not match its sidecar: {'; '.join(problems)}")
        index = cls.__new__(cls)
        index.dim, index.index_type, index.factory, index._index = int(raw.d), index_type, factory, raw
        index.metric = meta.get("metric", "ip")
        index._ids = np.unique(index._id_array())
        index.set_params(meta.get("params") or {})
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


def check_file(path: Path) -> str | None:
    """What is wrong with a saved structure file by its sidecar (its checksum), read once and not
    loaded; None when it is sound or there is none (flat)."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    if not path.is_file():
        return f"{path} is not a file"
    try:
        meta = FaissIndex.read_meta(path)
    except IndexCorruptError as exc:
        return str(exc)
    if meta is None:
        return f"{path} has no sidecar {sidecar_path(path).name}"
    if "crc32" in meta and _crc32(path) != meta["crc32"]:
        return f"{path} does not match the checksum in its sidecar"
    return None


def training_minimum(factory: str, dim: int, metric: str = "l2") -> tuple[int, str]:
    """(fewest vectors FAISS can train `factory` on at `dim`, the part that needs them); (0, "")
    when nothing is trained. StructureError when FAISS cannot build the string at this dimension.

    Read off the empty structure FAISS builds (cheap: nothing is trained or allocated per
    vector), by the rules FAISS enforces at training (tests/test_index_types.py checks each
    against FAISS itself): k-means refuses fewer points than centroids, so an IVF needs one
    vector a list, PQ codes of b bits 2**b, an OPQ rotation 256 (its PQ is 8-bit); a PCA or
    ITQ to d' dimensions needs d' vectors; a residual quantizer max(2**b, its dimension).
    """
    faiss = _faiss()
    try:
        root = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    except RuntimeError as e:
        raise StructureError(
            f"FAISS cannot build {factory!r} for {dim}-d vectors: {_faiss_message(e)}. Check the "
            "factory string, or use flat, hnsw, ivf-pq or auto.",
            option="index_type",
        ) from None
    # `root` owns the C++ objects the downcast views below point into: it stays referenced here.
    needs = _training_needs(root, factory, dim)
    return max(needs, default=(0, ""), key=lambda need: need[0])


def _training_needs(index, factory: str, dim: int) -> list[tuple[int, str]]:
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return _training_needs(index.index, factory, dim)
    if isinstance(index, faiss.IndexPreTransform):
        out = []
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, (faiss.PCAMatrix, faiss.ITQTransform)) and vt.d_out > vt.d_in:
                raise StructureError(
                    f"{factory!r} asks a {type(vt).__name__} for {vt.d_out} dimensions out of "
                    f"{vt.d_in}; it can only reduce them.",
                    option="index_type",
                )
            if isinstance(vt, faiss.PCAMatrix):
                out.append((vt.d_out, f"its PCA to {vt.d_out} dimensions"))
            elif isinstance(vt, faiss.ITQTransform):
                out.append((vt.d_out, f"its ITQ to {vt.d_out} dimensions"))
            elif isinstance(vt, faiss.OPQMatrix):
                out.append((256, "its OPQ rotation (256 centroids a sub-quantizer)"))
            elif not vt.is_trained and not isinstance(vt, faiss.RandomRotationMatrix):
                out.append((1, f"its {type(vt).__name__}"))
        return out + _training_needs(index.index, factory, dim)
    if isinstance(index, faiss.IndexRefine):
        return _training_needs(index.base_index, factory, dim) + _training_needs(index.refine_index, factory, dim)
    if isinstance(index, faiss.IndexHNSW):
        return _training_needs(index.storage, factory, dim)
    out = []
    if isinstance(index, faiss.IndexIVF):
        if index.nlist < 1:
            raise StructureError(
                f"{factory!r} has an inverted file of {index.nlist} lists; give it at least one.", option="index_type"
            )
        out.append((int(index.nlist), f"its IVF{index.nlist} ({index.nlist} lists, one vector each at least)"))
        out += _training_needs(index.quantizer, factory, dim)
    if index.is_trained:
        return out
    pq = getattr(index, "pq", None)
    rq = getattr(index, "rq", None)
    prq = getattr(index, "prq", None)
    if pq is not None:
        out.append((int(pq.ksub), f"its PQ{pq.M}x{pq.nbits} codes ({pq.ksub} centroids a sub-quantizer)"))
    elif rq is not None or prq is not None:
        if rq is not None:
            sub = rq
        else:
            assert prq is not None  # one of the two, by the test above
            sub = prq.subquantizer(0)
        k = 2 ** int(faiss.vector_to_array(sub.nbits).max())
        out.append((max(k, int(sub.d)), f"its residual quantizer ({k} centroids a step over {sub.d} dimensions)"))
    elif not out:
        out.append((1, f"its {type(index).__name__}"))
    return out


def _native_ids(index) -> bool:
    """Whether a FAISS index adds with ids itself (the IVF family, also behind a pre-transform)."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return _native_ids(index.index)
    return isinstance(index, faiss.IndexIVF)


def _ivf_ids(index) -> np.ndarray:
    """Every id stored in an IVF structure's inverted lists (behind any pre-transform)."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            ptr = invlists.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ptr, size).astype(np.int64).copy())
            invlists.release_ids(lst, ptr)
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _describe(index) -> str:
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        return f"IndexIDMap2({_describe(index.index)})"
    if isinstance(index, faiss.IndexPreTransform):
        chain = [type(faiss.downcast_VectorTransform(index.chain.at(i))).__name__ for i in range(index.chain.size())]
        return f"IndexPreTransform({', '.join(chain)}, {_describe(index.index)})"
    return type(index).__name__


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _faiss_message(exc: Exception) -> str:
    """FAISS's reason without the C++ function, file and assertion it names before it."""
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    reason = re.sub(r"^Error in .*? at \S+:\d+:\s*", "", lines[-1].strip())
    return re.sub(r"^Error: '.*?' failed:\s*", "", reason) or lines[-1]
