"""The facade that the CLI, the HTTP service and Python users call.

An index is a folder holding `index.db` (SQLite: images, vectors, what built them) and
`vectors.faiss` (+ JSON sidecar), a search structure derived from the database. The
database is the source of truth: on open the FAISS file is brought up to date from it,
so a run killed at any moment loses at most the chunk it had not committed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import images
from .backbones import DEFAULT_BACKBONE, Backbone, WeightsSpec, get_spec, load_backbone
from .config import DB_NAME, LOCK_NAME, VECTORS_NAME, default_workers, resolve_index_dir
from .errors import (
    BadImageError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    InputNotFoundError,
    NoImagesError,
    NotIndexedError,
    VecsearchError,
)
from .extract import RESAMPLE, Extractor
from .store import ImageRecord, Store
from .vectors import KINDS as VECTOR_KINDS
from .vectors import VectorIndex, normalize

log = logging.getLogger(__name__)

_UNSET: Any = object()
Progress = Callable[[int, int], None]


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


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


class VecIndex:
    """One index: add images, search, embed, report.

    The store, the vector index and (optionally) a built backbone are passed in; the
    backbone is otherwise built on first need from what the index records.
    """

    def __init__(self, directory: Path, store: Store, vectors: VectorIndex | None = None,
                 backbone: Backbone | None = None, *, requested: tuple[str, WeightsSpec] | None = None,
                 batch_size: int | None = None, workers: int | None = None, index_kind: str = "flat"):
        self.directory = Path(directory)
        self._index_kind = index_kind  # for a new index; an existing one keeps what it records
        self.store = store
        self._backbone = backbone
        if requested is None and backbone is not None:
            requested = (backbone.name, backbone.weights)
        self._requested = requested
        self.batch_size = batch_size
        self.workers = workers
        self.vectors = vectors
        self._vectors_generation = -1
        # Server threads may refresh at once; one reloads, the others then see it current.
        self._refresh_lock = threading.Lock()
        if self.store.info() is not None and self.vectors is None:
            self._load_vectors()

    # -- lifecycle ----------------------------------------------------------------
    @property
    def vectors_path(self) -> Path:
        return self.directory / VECTORS_NAME

    @property
    def info(self):
        return self.store.info()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "VecIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """One writer at a time; the OS drops the lock if the process dies."""
        fd = self._try_lock()
        if fd is None:
            raise VecsearchError(f"Another vecsearch run is writing to {self.directory}; wait for it to finish.")
        try:
            yield
        finally:
            os.close(fd)

    def _try_lock(self) -> int | None:
        """The writer lock's file descriptor if no one else holds it, else None."""
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
            return None

    # -- the FAISS file, kept in step with the database -------------------------------
    def _load_vectors(self) -> None:
        info = self.info
        generation = self.store.generation()
        vi, meta = None, {}
        for attempt in range(2):
            try:
                vi, meta = VectorIndex.load(self.vectors_path)
                break
            except FileNotFoundError:
                break
            except IndexCorruptError as e:
                # Maybe a save was between its two renames; look once more, then rebuild.
                if attempt == 0:
                    time.sleep(0.2)
                    continue
                log.warning("rebuilding the vector file from the database: %s", e)
        if vi is None or vi.dim != info.dim or vi.kind != info.index_kind:
            vi, meta = VectorIndex(info.dim, info.index_kind), {}
        if meta.get("generation") == generation and len(vi) == self.store.counts()["vectors"]:
            self.vectors = vi
            self._vectors_generation = generation
            return
        db_ids = self.store.vector_ids()
        extra = np.setdiff1d(vi.ids(), db_ids)
        missing = np.setdiff1d(db_ids, vi.ids())
        log.info("syncing vectors with the database: +%d -%d", len(missing), len(extra))
        if len(extra):
            vi.remove(extra)
        if len(missing):
            ids, mat, _ = self.store.vectors(missing, dim=info.dim)
            vi.add(ids, mat)
        # Publish only the finished index: concurrent searches hold the old one until here.
        self.vectors = vi
        self._vectors_generation = generation
        # Save the repair unless an indexer holds the lock (it will save its own state).
        fd = self._try_lock()
        if fd is not None:
            try:
                self._save_vectors()
            finally:
                os.close(fd)

    def _save_vectors(self) -> None:
        info = self.info
        self.vectors.save(self.vectors_path, {
            "generation": self.store.generation(),
            "backbone": info.backbone,
            "weights_fingerprint": info.weights_fingerprint,
            "metric": info.metric,
        })

    def refresh(self) -> bool:
        """Reload the vectors if another process changed the index; True if it did."""
        if self.info is None:
            return False
        if self.store.generation() == self._vectors_generation:
            return False
        with self._refresh_lock:
            if self.store.generation() == self._vectors_generation:
                return False
            self._load_vectors()
            return True

    # -- the backbone ---------------------------------------------------------------
    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            info = self.info
            if info is None:
                name, weights = self._requested or (DEFAULT_BACKBONE, WeightsSpec("imagenet"))
                self._backbone = load_backbone(name, weights)
            else:
                weights = self._requested[1] if self._requested else _stored_weights(info)
                bb = load_backbone(info.backbone, weights)
                self._check_fingerprint(bb)
                self._backbone = bb
        return self._backbone

    def _check_fingerprint(self, bb: Backbone) -> None:
        info = self.info
        if info is not None and bb.fingerprint != info.weights_fingerprint:
            raise IndexMismatchError(
                f"The weights ({bb.weights.describe()}) are not the ones that built the index at "
                f"{self.directory} ({_stored_weights(info).describe()}); their values differ. "
                "Use the same weights, or build a new index with --index DIR."
            )

    def extractor(self) -> Extractor:
        return Extractor(self.backbone, self.batch_size, self.workers)

    def _ensure_info(self) -> None:
        if self.info is not None:
            return
        bb = self.backbone
        self.store.create_info(
            backbone=bb.name, weights_kind=bb.weights.kind, weights_seed=bb.weights.seed,
            weights_path=bb.weights.path, weights_fingerprint=bb.fingerprint, dim=bb.dim,
            metric="cosine", index_kind=self._index_kind,
        )
        self.vectors = VectorIndex(bb.dim, self._index_kind)
        self._vectors_generation = 0

    # -- indexing -------------------------------------------------------------------
    def add(self, paths: Iterable[str | os.PathLike], *, progress: Progress | None = None,
            chunk_size: int = 64, chunk_seconds: float = 10.0) -> IndexSummary:
        """Index image files and folders incrementally.

        New or changed files (size + mtime, then content hash) are embedded; moved or copied
        files reuse stored vectors; entries under the given folders whose files are gone are
        removed. Results are committed every `chunk_size` images or `chunk_seconds`, so a
        killed run loses at most one chunk and the next run resumes from there.
        """
        started = time.perf_counter()
        paths = [Path(p) for p in paths]
        with self._write_lock():
            files = list(images.iter_image_files(paths))
            if not files:
                raise NoImagesError(f"No image files found in {', '.join(map(str, paths))}.")
            self._ensure_info()
            self.refresh()
            summary = IndexSummary(total=len(files))
            plan = self._plan(paths, files, summary)
            self._commit(deletes=plan.deletes, moves=plan.moves, copies=plan.copies)
            total = len(plan.to_embed)
            if progress:
                progress(0, total)
            if total:
                done = 0
                chunk: list[dict] = []
                last_commit = time.monotonic()
                for item in self.extractor().embed_files(plan.to_embed):
                    size, mtime_ns = plan.stats[item.path]
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
                        self._commit(upserts=chunk)
                        chunk, last_commit = [], time.monotonic()
                    if progress:
                        progress(done, total)
                self._commit(upserts=chunk)
            self._save_vectors()
        summary.failed.sort(key=lambda f: f.path)
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary

    def _commit(self, **changes) -> None:
        if not any(changes.values()):
            return
        result = self.store.apply(**changes)
        if result["unset"]:
            self.vectors.remove(np.array(result["unset"], np.int64))
        if result["set"]:
            ids, mat, _ = self.store.vectors(result["set"], dim=self.vectors.dim)
            self.vectors.add(ids, mat)
        self._vectors_generation = self.store.generation()

    def _plan(self, roots: list[Path], files: list[Path], summary: IndexSummary) -> "_Plan":
        """Decide per file: unchanged, moved, copied, or to embed; and what is gone."""
        records = self.store.records()
        plan = _Plan()
        found = {str(f) for f in files}
        candidates: list[Path] = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                candidates.append(f)  # the decoder will report why
                plan.stats[f] = (0, 0)
                continue
            plan.stats[f] = (st.st_size, st.st_mtime_ns)
            rec = records.get(str(f))
            if rec is not None and rec.size == st.st_size and rec.mtime_ns == st.st_mtime_ns:
                self._count_existing(rec, summary)
            else:
                candidates.append(f)
        resolved_roots = [r.resolve() for r in roots]
        gone_all = [rec for path, rec in records.items()
                    if path not in found and _under(path, resolved_roots) and not os.path.exists(path)]
        gone = {rec.sha256: rec for rec in gone_all if rec.sha256 and rec.status == "ok"}
        gone_ids = {rec.id for rec in gone_all}
        if candidates and records:
            shas = dict(zip(candidates, _hash_all(candidates)))
            known = self.store.ok_ids_by_sha([s for s in shas.values() if s])
            for f in candidates:
                sha = shas[f]
                rec = records.get(str(f))
                size, mtime_ns = plan.stats[f]
                if sha and rec is not None and rec.sha256 == sha:  # touched, not changed
                    plan.moves.append((rec.id, {"size": size, "mtime_ns": mtime_ns}))
                    self._count_existing(rec, summary)
                    continue
                src = gone.get(sha) if sha else None
                if src is not None and rec is None:  # renamed or moved
                    del gone[sha]
                    plan.moves.append((src.id, {"path": str(f), "size": size, "mtime_ns": mtime_ns}))
                    summary.reused += 1
                    continue
                if sha and sha in known and known[sha] not in gone_ids:  # a copy: reuse its vector
                    plan.copies.append((known[sha], {"path": str(f), "size": size, "mtime_ns": mtime_ns, "sha256": sha,
                                                     "width": None, "height": None, "status": "ok", "reason": None}))
                    summary.reused += 1
                    continue
                plan.to_embed.append(f)
        else:
            plan.to_embed = candidates
        moved_ids = {m[0] for m in plan.moves}
        for rec in gone_all:
            if rec.id not in moved_ids:
                plan.deletes.append(rec.id)
                summary.removed_paths.append(rec.path)
        summary.removed = len(summary.removed_paths)
        summary.removed_paths.sort()
        return plan

    @staticmethod
    def _count_existing(rec: ImageRecord, summary: IndexSummary) -> None:
        if rec.status == "ok":
            summary.unchanged += 1
        else:
            summary.failed.append(FailedImage(rec.path, rec.reason or "failed"))

    # -- querying ---------------------------------------------------------------------
    def _require_info(self):
        info = self.info
        if info is None:
            raise IndexNotFoundError(f"The index at {self.directory} is empty. Run `vecsearch index PHOTOS` first.")
        return info

    def embed(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Unit vectors (n, dim) for image files, with this index's backbone; a bad file raises."""
        out = []
        for item in self.extractor().embed_files(Path(p) for p in paths):
            if item.error is not None:
                raise BadImageError(item.error, str(item.path))
            out.append(item.vector)
        return np.stack(out) if out else np.zeros((0, self.backbone.dim), np.float32)

    def embed_bytes(self, data: bytes, *, max_pixels: int | None = images.DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Unit vector of an image given as bytes (an upload), decoded exactly as indexing does."""
        pixels, _, _ = images.decode_image(data, self.backbone.input_size, max_pixels=max_pixels, resample=RESAMPLE)
        return self.extractor().embed_pixels(pixels[None])[0]

    def vector(self, image_id: int) -> np.ndarray:
        ids, mat, _ = self.store.vectors([image_id], dim=self._require_info().dim)
        if not len(ids):
            raise NotIndexedError(f"No indexed image with id {image_id}.")
        return mat[0]

    def search(self, query: str | os.PathLike | np.ndarray, k: int = 10, *, include_self: bool = False) -> list[Hit]:
        """The k most similar indexed images to an image file, an indexed path, or a vector.

        A path that is already indexed reuses its stored vector and, unless include_self,
        is left out of its own results.
        """
        self._require_info()
        if k < 1:
            raise VecsearchError(f"k must be at least 1, got {k}.")
        self.refresh()
        exclude: set[int] = set()
        if isinstance(query, np.ndarray):
            q = normalize(query.astype(np.float32).reshape(1, -1))[0]
        else:
            p = Path(query).expanduser()
            if not p.exists():
                raise InputNotFoundError(f"No such file: {p}")
            rec = self.store.image_by_path(str(p.resolve()))
            if rec is not None and rec.status == "ok" and _fresh(rec, p):
                q = self.vector(rec.id)
                if not include_self:
                    exclude.add(rec.id)
            else:
                q = self.embed([p])[0]
        return self.search_vector(q, k, exclude=exclude)

    def search_vector(self, q: np.ndarray, k: int = 10, *, exclude: set[int] | None = None) -> list[Hit]:
        if q.shape[-1] != self.vectors.dim:
            raise VecsearchError(f"Query vector has {q.shape[-1]} dimensions; the index has {self.vectors.dim}.")
        scores, ids = self.vectors.search(q.reshape(1, -1), k, exclude=exclude)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        recs = self.store.images(i for i, _ in pairs)
        return [Hit(rank=n + 1, id=i, path=recs[i].path, score=s) for n, (i, s) in enumerate(pairs) if i in recs]

    def similar(self, image_id: int, k: int = 10) -> list[Hit]:
        """Neighbours of an indexed image, itself left out."""
        self._require_info()
        self.refresh()
        return self.search_vector(self.vector(image_id), k, exclude={image_id})

    def image(self, image_id: int) -> ImageRecord:
        rec = self.store.image(image_id)
        if rec is None:
            raise NotIndexedError(f"No indexed image with id {image_id}.")
        return rec

    def stats(self) -> dict:
        info = self._require_info()
        self.refresh()
        counts = self.store.counts()
        size = lambda p: p.stat().st_size if p.exists() else 0  # noqa: E731
        db = self.directory / DB_NAME
        return {
            "index": str(self.directory),
            "images": counts["images"],
            "vectors": len(self.vectors),
            "ok": counts["ok"],
            "failed": counts["failed"],
            "backbone": info.backbone,
            "weights": _stored_weights(info).describe(),
            "weights_fingerprint": info.weights_fingerprint,
            "dim": info.dim,
            "metric": info.metric,
            "index_type": f"IndexIDMap2({'IndexFlatIP' if info.index_kind == 'flat' else 'IndexHNSWFlat'})",
            "db_bytes": size(db) + size(db.with_name(db.name + "-wal")),
            "vectors_bytes": size(self.vectors_path),
            "created_at": info.created_at.isoformat(timespec="seconds") + "Z",
        }

    def export(self, out: str | os.PathLike) -> int:
        """Write ids, paths and vectors of every indexed image to a .npz file; returns the count."""
        info = self._require_info()
        ids, mat, _ = self.store.vectors(dim=info.dim)
        recs = self.store.images(ids)
        paths = np.array([recs[int(i)].path for i in ids], dtype=str)
        np.savez(out, ids=ids, paths=paths, vectors=mat)
        return len(ids)


@dataclass
class _Plan:
    stats: dict[Path, tuple[int, int]] = field(default_factory=dict)
    moves: list[tuple[int, dict]] = field(default_factory=list)
    copies: list[tuple[int, dict]] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    to_embed: list[Path] = field(default_factory=list)


def _under(path: str, roots: list[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)


def _fresh(rec: ImageRecord, p: Path) -> bool:
    try:
        st = p.stat()
    except OSError:
        return False
    return st.st_size == rec.size and st.st_mtime_ns == rec.mtime_ns


def _hash_all(paths: list[Path]) -> list[str | None]:
    def one(p: Path) -> str | None:
        try:
            return images.file_sha256(p)
        except OSError:
            return None

    with ThreadPoolExecutor(default_workers()) as pool:
        return list(pool.map(one, paths))


def _stored_weights(info) -> WeightsSpec:
    return WeightsSpec(info.weights_kind, info.weights_seed, info.weights_path)


def open_index(path: str | os.PathLike | None = None, *, backbone: str | None = None, weights: Any = _UNSET,
               seed: int | None = None, create: bool = True, batch_size: int | None = None,
               workers: int | None = None, model: Backbone | None = None,
               index_kind: str | None = None) -> VecIndex:
    """Open (or create) the index at `path` (else $VECSEARCH_INDEX, else the default folder).

    backbone/weights choose the model for a new index (weights: "imagenet", None for the
    seeded random init, or a weights file); for an existing one they must match what built
    it, or IndexMismatchError is raised. `model` passes an already built Backbone.
    index_kind picks the FAISS structure: "flat" (exact, the default) or "hnsw" (approximate,
    sub-millisecond on 100k+ vectors); giving another kind than an index has converts it,
    rebuilt from the database.
    """
    if index_kind is not None and index_kind not in VECTOR_KINDS:
        raise VecsearchError(f"Unknown index type {index_kind!r}; choose one of: {', '.join(VECTOR_KINDS)}.")
    directory = resolve_index_dir(path)
    if not (directory / DB_NAME).exists():
        if not create:
            raise IndexNotFoundError(f"No index at {directory}. Build one with `vecsearch index PHOTOS` (or pass --index DIR).")
        directory.mkdir(parents=True, exist_ok=True)
    store = Store(directory / DB_NAME)
    info = store.info()
    if info is None and not create:
        store.close()
        raise IndexNotFoundError(f"The index at {directory} is empty. Run `vecsearch index PHOTOS` first.")
    requested = None
    if backbone is not None or weights is not _UNSET or seed is not None or model is not None:
        name = model.name if model else (backbone or (info.backbone if info else DEFAULT_BACKBONE))
        get_spec(name)
        if model is not None:
            wspec = model.weights
        elif weights is _UNSET:
            wspec = _stored_weights(info) if info else WeightsSpec.parse("imagenet" if seed is None else None, seed)
        else:
            wspec = WeightsSpec.parse(weights, seed)
        requested = (name, wspec)
        if info is not None:
            stored = _stored_weights(info)
            if name != info.backbone:
                store.close()
                raise IndexMismatchError(
                    f"The index at {directory} was built with backbone {info.backbone}, not {name}. "
                    "Drop --backbone, or use another --index DIR for a new index.")
            if wspec.kind != stored.kind or (wspec.kind == "random" and wspec.seed != stored.seed):
                store.close()
                raise IndexMismatchError(
                    f"The index at {directory} was built with weights {stored.describe()}, not {wspec.describe()}. "
                    "Drop --weights, or use another --index DIR for a new index.")
    if info is not None and index_kind is not None and index_kind != info.index_kind:
        log.info("converting %s from %s to %s", directory, info.index_kind, index_kind)
        store.set_index_kind(index_kind)
    index = VecIndex(directory, store, backbone=model, requested=requested, batch_size=batch_size,
                     workers=workers, index_kind=index_kind or "flat")
    if model is not None:
        index._check_fingerprint(model)
    return index
