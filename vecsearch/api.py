"""The index object: every feature of vecsearch as a method of `VecIndex`.

An index is a folder holding `index.db` (SQLite: images, vectors, labels, classifiers; the
source of truth) and `vectors.faiss` (+ JSON sidecar), a search structure derived from the
database. The CLI, the HTTP service and Python users all call the methods below; each one
hands its work down to the module that owns the concept (`indexer`, `labels`, `classes`,
`classify`, `finetune`, `dupes`), passing the store, the FAISS index and the backbone in.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import classes, classifiers, classify, dupes, finetune, images, indexer, labels
from .classes import SEED
from .classifiers import DEFAULT_TOP as CLASSIFY_TOP
from .classify import DEFAULT_K as KNN_K
from .dupes import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD
from .finetune import DEFAULT_NAME as HEAD_NAME
from .finetune import UNFREEZE_EPOCHS, UNFREEZE_LEARNING_RATE
from .labels import DEFAULT_TOP as LABEL_TOP
from .backbones import DEFAULT_BACKBONE, Backbone, WeightsSpec, check_fingerprint, get_spec, load_backbone
from .config import DB_NAME, DEFAULT_K, LOCK_NAME, MAX_IMAGE_PIXELS, VECTORS_NAME, resolve_index_dir
from .errors import BadImageError, IndexCorruptError, IndexMismatchError, IndexNotFoundError, InputNotFoundError, NoImagesError, NotIndexedError, VecsearchError
from .extract import RESAMPLE, Extractor
from .files import WriterLock
from .indexer import IndexSummary
from .store import ImageRecord, Store, no_annotations
from .vectors import INDEX_TYPES, FaissIndex, normalize

log = logging.getLogger(__name__)

_UNSET: Any = object()
Progress = Callable[[int, int], None]

__all__ = ["VecIndex", "open_index", "Hit"]


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


class VecIndex:
    """One index: add images, search, label, classify, fine-tune, find duplicates, report.

    The store, the FAISS index and (optionally) a built backbone are passed in; the
    backbone is otherwise built on first need from what the index records. Open one with
    `open_index`.
    """

    def __init__(self, directory: Path, store: Store, faiss: FaissIndex | None = None,
                 backbone: Backbone | None = None, *, requested: tuple[str, WeightsSpec] | None = None,
                 batch_size: int | None = None, workers: int | None = None, index_type: str = "flat"):
        self.directory = Path(directory)
        self.store = store
        self.read_only = store.read_only
        self.faiss = faiss
        self.batch_size = batch_size
        self.workers = workers
        self._index_type = index_type  # for a new index; an existing one keeps what it records
        self._backbone = backbone
        if requested is None and backbone is not None:
            requested = (backbone.name, backbone.weights)
        self._requested = requested
        self._generation = -1  # the database generation `faiss` holds
        self._lock = WriterLock(self.directory / LOCK_NAME)
        # Server threads may refresh at once; one reloads, the others then see it current.
        self._refresh_lock = threading.Lock()
        # One model call at a time: a Keras model is not safe to call from several threads.
        self._model_lock = threading.Lock()
        self._loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()  # (name, created_at) -> classifier
        self._loaded_lock = threading.Lock()
        if self.store.info() is not None and self.faiss is None:
            self._load_faiss()

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def info(self):
        """What built the index (backbone, weights, dim, index_type), or None before the first image."""
        return self.store.info()

    @property
    def vectors_path(self) -> Path:
        return self.directory / VECTORS_NAME

    @property
    def generation(self) -> int:
        """Bumped by every commit that changes vectors, in any process."""
        return self.store.generation()

    def __len__(self) -> int:
        """Images with a vector (searchable)."""
        return self.store.counts()["vectors"]

    def __repr__(self) -> str:
        info = self.info
        what = f"{info.backbone}, {info.index_type}, {len(self)} vectors" if info else "empty"
        return f"<VecIndex {str(self.directory)!r}: {what}>"

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "VecIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_info(self):
        return self.store.require_info()

    def _check_writable(self) -> None:
        if self.read_only:
            raise VecsearchError(f"The index at {self.directory} is open read-only (the folder is not writable): "
                                 "searching and reading work; to change it, fix the folder's permissions.")

    def _load_faiss(self) -> None:
        if os.path.lexists(self.vectors_path) and not self.vectors_path.is_file():
            raise IndexCorruptError(f"{self.vectors_path} is not a file: move it away and run again "
                                    "(the vector file is rebuilt from the database).")
        can_save = _never if self.read_only else self._lock.if_free
        faiss, generation = indexer.load_synced(self.store, self.vectors_path, can_save=can_save)
        # Publish only the finished index: concurrent searches hold the old one until here.
        self.faiss, self._generation = faiss, generation

    def refresh(self) -> bool:
        """Reload the vectors if another process changed the index; True if it did."""
        if self.info is None or self.store.generation() == self._generation:
            return False
        with self._refresh_lock:
            if self.store.generation() == self._generation:
                return False
            self._load_faiss()
            return True

    # -- the backbone -------------------------------------------------------------------
    @property
    def backbone(self) -> Backbone:
        """The frozen feature extractor, built on first use from what the index records."""
        if self._backbone is None:
            info = self.info
            if info is None:
                name, weights = self._requested or (DEFAULT_BACKBONE, WeightsSpec("imagenet"))
                self._backbone = load_backbone(name, weights)
            else:
                weights = self._requested[1] if self._requested else WeightsSpec.recorded(info)
                bb = load_backbone(info.backbone, weights)
                check_fingerprint(bb, info, self.directory)
                self._backbone = bb
        return self._backbone

    def extractor(self) -> Extractor:
        return Extractor(self.backbone, self.batch_size, self.workers)

    def warm_up(self) -> None:
        """Build the backbone and trace its compiled call now, so the first query doesn't pay for it."""
        w, h = self.backbone.input_size
        with self._model_lock:
            self.extractor().embed_pixels(np.zeros((1, h, w, 3), np.uint8))

    def _ensure_info(self) -> None:
        if self.info is not None:
            return
        bb = self.backbone
        self.store.create_info(
            backbone=bb.name, weights_kind=bb.weights.kind, weights_seed=bb.weights.seed,
            weights_path=bb.weights.path, weights_fingerprint=bb.fingerprint, dim=bb.dim,
            metric="cosine", index_type=self._index_type,
        )
        self.faiss = FaissIndex(bb.dim, self._index_type)
        self._generation = 0

    # -- indexing -------------------------------------------------------------------------
    def add(self, paths: Iterable[str | os.PathLike], *, progress: Progress | None = None,
            chunk_size: int = indexer.CHUNK_SIZE, chunk_seconds: float = indexer.CHUNK_SECONDS) -> IndexSummary:
        """Index image files and folders incrementally (see `indexer.run`).

        New or changed files (size + mtime, then content hash) are embedded; moved or copied
        files reuse stored vectors; entries under the given folders whose files are gone are
        removed. Results are committed in chunks, so a killed run loses at most one chunk and
        the next run resumes from there.
        """
        roots = [images.absolute(p) for p in paths]
        self._check_writable()
        with self._lock.held():
            found = list(images.scan(roots))
            files = [f.path for f in found if f.reason is None]
            rejected = [f for f in found if f.reason is not None]
            if not found:
                raise NoImagesError(f"No image files found in {', '.join(map(str, roots))}.")
            self._ensure_info()
            self.refresh()
            summary = indexer.run(self.store, self.faiss, self.extractor, roots, files, progress=progress,
                                  chunk_size=chunk_size, chunk_seconds=chunk_seconds, rejected=rejected)
            self._generation = self.store.generation()
            indexer.save(self.store, self.vectors_path, self.faiss)
        return summary

    # -- embedding ------------------------------------------------------------------------
    def embed(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Unit vectors (n, dim) for image files, with this index's backbone; a bad file raises BadImageError."""
        out = []
        with self._model_lock:
            for item in self.extractor().embed_files(Path(p) for p in paths):
                if item.error is not None:
                    raise BadImageError(item.error, str(item.path))
                out.append(item.vector)
        return np.stack(out) if out else np.zeros((0, self.backbone.dim), np.float32)

    def embed_bytes(self, data: bytes, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
        """Unit vector of an image given as bytes (an upload), decoded exactly as indexing does."""
        pixels, _, _ = images.decode_image(data, self.backbone.input_size, max_pixels=max_pixels, resample=RESAMPLE)
        with self._model_lock:
            return self.extractor().embed_pixels(pixels[None])[0]

    def embed_image(self, image) -> np.ndarray:
        """Unit vector of a PIL image, encoded losslessly and decoded exactly as indexing does."""
        buf = io.BytesIO()
        try:
            image.save(buf, format="PNG")
        except (AttributeError, OSError, ValueError) as e:
            raise BadImageError(f"cannot encode this image: {e}") from e
        return self.embed_bytes(buf.getvalue())

    def vector(self, image_id: int) -> np.ndarray:
        """The stored unit vector of an indexed image."""
        ids, mat, _ = self.store.vectors([image_id], dim=self._require_info().dim)
        if not len(ids):
            raise NotIndexedError(f"No indexed image with id {image_id}.")
        return mat[0]

    def vectors_for(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Unit vectors of image files: an indexed, unchanged file reuses its stored vector."""
        paths = [images.absolute(p) for p in paths]
        for p in paths:
            if not os.path.lexists(p):
                raise InputNotFoundError(f"No such file: {p}")
        out: list[np.ndarray | None] = [self._stored_vector(p)[1] for p in paths]
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            for i, vec in zip(todo, self.embed([paths[i] for i in todo])):
                out[i] = vec
        return np.stack(out).astype(np.float32)

    def _stored_vector(self, path: Path) -> tuple[int | None, np.ndarray | None]:
        """(id, vector) of an indexed file that is unchanged since, else (None, None)."""
        if self.info is None or not images.storable(path):
            return None, None
        rec = self.store.image_by_path(str(images.absolute(path)))
        if rec is not None and rec.status == "ok" and indexer.is_unchanged(rec, path):
            return rec.id, self.vector(rec.id)
        return None, None

    # -- search ---------------------------------------------------------------------------
    def search(self, query, k: int = DEFAULT_K, *, include_self: bool = False) -> list[Hit]:
        """The k most similar indexed images to a query, best first (cosine similarity).

        The query is an image file path, a vector, image bytes (an upload) or a PIL image.
        A path that is already indexed reuses its stored vector and, unless include_self,
        is left out of its own results.
        """
        self._require_info()
        exclude: set[int] = set()
        if isinstance(query, np.ndarray):
            q = normalize(query.astype(np.float32).reshape(-1))
        elif isinstance(query, (bytes, bytearray, memoryview)):
            q = self.embed_bytes(bytes(query))
        elif isinstance(query, (str, os.PathLike)):
            p = images.absolute(query)
            if not os.path.lexists(p):
                raise InputNotFoundError(f"No such file: {p}")
            found, q = self._stored_vector(p)
            if found is not None and not include_self:
                exclude.add(found)
            if q is None:
                q = self.embed([p])[0]
        elif hasattr(query, "save") and hasattr(query, "mode"):  # a PIL image
            q = self.embed_image(query)
        else:
            raise VecsearchError(f"Cannot search with a {type(query).__name__}: give an image path, "
                                 "a vector, image bytes or a PIL image.")
        return self.search_vector(q, k, exclude=exclude)

    def search_vector(self, q: np.ndarray, k: int = DEFAULT_K, *, exclude: set[int] | None = None) -> list[Hit]:
        """The k indexed images nearest a unit vector, best first; ids in `exclude` left out."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise VecsearchError(f"k must be at least 1, got {k}.")
        self.refresh()
        q = np.asarray(q, np.float32)
        if q.shape[-1] != self.faiss.dim:
            raise VecsearchError(f"Query vector has {q.shape[-1]} dimensions; the index has {self.faiss.dim}.")
        scores, ids = self.faiss.search(q.reshape(1, -1), k, exclude=exclude)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        recs = self.store.images(i for i, _ in pairs)
        hits = [(i, s) for i, s in pairs if i in recs]  # one deleted in between is skipped
        return [Hit(rank=n + 1, id=i, path=recs[i].path, score=s) for n, (i, s) in enumerate(hits)]

    def similar(self, image_id: int, k: int = DEFAULT_K) -> list[Hit]:
        """Neighbours of an indexed image by its stored vector (no model call), itself left out."""
        self._require_info()
        self.refresh()
        try:
            q = self.faiss.reconstruct(image_id)  # from memory: no database round trip
        except KeyError:
            raise NotIndexedError(f"No indexed image with id {image_id}.") from None
        return self.search_vector(q, k, exclude={image_id})

    # -- images ---------------------------------------------------------------------------
    def image(self, image_id: int) -> ImageRecord:
        """The record of one image (ok or failed)."""
        rec = self.store.image(image_id)
        if rec is None:
            raise NotIndexedError(f"No indexed image with id {image_id}.")
        return rec

    def images(self, offset: int = 0, limit: int = 100, status: str | None = None) -> tuple[int, list[ImageRecord]]:
        """(total, one page of image records by id), all or only "ok" / "failed" ones."""
        if status not in (None, "ok", "failed"):
            raise VecsearchError(f"status must be ok or failed, not {status!r}.")
        return self.store.page_images(offset, limit, status)

    def failed(self) -> list[ImageRecord]:
        """Images that could not be embedded, with their reasons, by path."""
        return self.store.failed()

    def annotations(self, ids: Iterable[int], *, top: int = 5) -> dict[int, dict]:
        """{id: {"imagenet_labels", "user_label", "predictions"}}, every id present (empty when none)."""
        ids = [int(i) for i in ids]
        stored = self.store.annotations(ids, top=top)
        return {i: stored.get(i) or no_annotations() for i in ids}

    def stats(self) -> dict:
        """Counts, model, index_type and sizes."""
        info = self._require_info()
        self.refresh()
        counts = self.store.counts()
        size = lambda p: p.stat().st_size if p.exists() else 0  # noqa: E731
        db = self.directory / DB_NAME
        return {
            "index": str(self.directory),
            "images": counts["images"],
            "vectors": len(self.faiss),
            "ok": counts["ok"],
            "failed": counts["failed"],
            "backbone": info.backbone,
            "weights": WeightsSpec.recorded(info).describe(),
            "weights_fingerprint": info.weights_fingerprint,
            "dim": info.dim,
            "metric": info.metric,
            "index_type": info.index_type,
            "faiss_index": self.faiss.describe(),
            "db_bytes": size(db) + size(db.with_name(db.name + "-wal")),
            "vectors_bytes": size(self.vectors_path),
            "created_at": info.created_at.isoformat(timespec="seconds") + "Z",
        }

    def export(self, out: str | os.PathLike) -> int:
        """Write ids, paths and vectors of every indexed image to a .npz file; returns the count."""
        info = self._require_info()
        out = Path(out).expanduser()
        if not out.parent.is_dir():
            raise InputNotFoundError(f"Cannot write {out}: the folder {out.parent} does not exist; create it first.")
        if out.is_dir():
            raise VecsearchError(f"Cannot write {out}: it is a folder; give a file name such as {out / 'vectors.npz'}.")
        ids, mat, _ = self.store.vectors(dim=info.dim)
        recs = self.store.images(ids)
        paths = np.array([recs[int(i)].path for i in ids], dtype=str)
        np.savez(out, ids=ids, paths=paths, vectors=mat)
        return len(ids)

    # -- ImageNet labels ------------------------------------------------------------------
    def label(self, *, paths: Iterable[str | os.PathLike] | None = None, top: int = LABEL_TOP,
              only_missing: bool = False, weights: Any = None, progress: Progress | None = None) -> labels.LabelSummary:
        """Store the top ImageNet classes of indexed images (all, or those under `paths`), from their stored vectors."""
        ids = labels.ids_for_paths(self.store, paths) if paths else None
        return labels.label_images(self.store, self.directory, top=top, ids=ids, only_missing=only_missing,
                                   weights=weights, progress=progress)

    def image_labels(self, paths: Iterable[str | os.PathLike] | None = None) -> list[labels.ImageLabels]:
        """Stored ImageNet labels of indexed files/folders (all labelled images when None), by path."""
        return labels.image_labels(self.store, list(paths) if paths else None)

    def search_labels(self, name: str, limit: int | None = None) -> list[labels.LabelHit]:
        """Images whose stored ImageNet top-k holds a class (name or WordNet id), most probable first."""
        return labels.images_with_label(self.store, name, limit)

    def imagenet_probabilities(self, ids: Iterable[int] | None = None, weights: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities over the 1000 ImageNet classes) of indexed images; nothing is stored."""
        return labels.probabilities(self.store, self.directory, ids, weights)

    # -- classes of your own and classifiers ------------------------------------------------
    def teach(self, source: str | os.PathLike, *, replace: bool = False,
              progress: Progress | None = None) -> classes.TeachSummary:
        """Label images with classes of your own from class folders or a CSV; unindexed files are indexed first."""
        return classes.teach(self.store, source, add=self.add, replace=replace, progress=progress)

    def label_counts(self) -> dict[str, dict[str, int]]:
        """{class: {split or "": images}} of the user's labels."""
        return classes.label_counts(self.store)

    def train_classifier(self, kind: str, *, k: int = KNN_K, name: str | None = None,
                         seed: int = SEED) -> classify.TrainResult:
        """Train (knn or probe), evaluate, save, and predict every unlabelled image."""
        self._require_info()
        return classify.train(self.store, self.directory, kind, k=k, name=name, seed=seed)

    def apply_classifier(self, name: str | None = None, kind: str | None = None) -> classify.TrainResult:
        """Predict every unlabelled image with a saved classifier (the newest, or `name`)."""
        self._require_info()
        return classify.apply_saved(self.store, self.directory, name, kind)

    def classifiers(self) -> list[dict]:
        """Saved classifiers, newest first: name, kind, path, created_at, params, metrics."""
        return classifiers.list_all(self.store)

    def classifier(self, name: str | None = None, kind: str | None = None) -> tuple[dict, Any]:
        """(row, loaded model) of a saved classifier: `name`, else the newest (of `kind`).

        Loaded models are kept (the last 8) while their row is unchanged, so a retrained
        classifier is picked up and a server does not unpickle one per request.
        """
        row = classifiers.find(self.store, name, kind)
        key = (row["name"], row["created_at"])
        with self._loaded_lock:
            if key not in self._loaded:
                self._loaded[key] = classifiers.load(self.directory, row)
                while len(self._loaded) > 8:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return row, self._loaded[key]

    def classify(self, query, *, name: str | None = None, kind: str | None = None,
                 top: int = CLASSIFY_TOP, model: tuple[dict, Any] | None = None) -> classifiers.Classification:
        """Classify one image (a file path, image bytes, a PIL image or a vector) with a saved classifier.

        An indexed, unchanged file reuses its stored vector. `model` passes a (row, model)
        from `classifier()` already loaded (the server caches them).
        """
        row, clf = model or self.classifier(name, kind)
        path = None
        if isinstance(query, np.ndarray):
            vector = normalize(query.astype(np.float32).reshape(-1))
        elif isinstance(query, (bytes, bytearray, memoryview)):
            vector = self.embed_bytes(bytes(query))
        elif isinstance(query, (str, os.PathLike)):
            p = images.absolute(query)
            vector, path = self.vectors_for([p])[0], str(p)
        elif hasattr(query, "save") and hasattr(query, "mode"):
            vector = self.embed_image(query)
        else:
            raise VecsearchError(f"Cannot classify a {type(query).__name__}: give an image path, "
                                 "image bytes, a PIL image or a vector.")
        with self._model_lock:  # a fine-tuned head is a Keras model too
            return classifiers.classification(clf, row, vector, top=top, path=path)

    # -- fine-tuning ----------------------------------------------------------------------
    def finetune(self, *, name: str = HEAD_NAME, params: finetune.HeadParams | None = None,
                 on_epoch: Callable[[int, dict], None] | None = None) -> finetune.FinetuneResult:
        """Train a Keras head on the labelled vectors, score it, save it as classifier `name`."""
        self._require_info()
        return finetune.finetune(self.store, self.directory, name=name, params=params, on_epoch=on_epoch)

    def unfreeze(self, head_name: str, n_layers: int, *, epochs: int = UNFREEZE_EPOCHS,
                 learning_rate: float = UNFREEZE_LEARNING_RATE,
                 batch_size: int = 16, seed: int = 0, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """Fine-tune the backbone's last `n_layers` end to end with saved head `head_name` on top.

        The tuned weights are written to a file (the index itself never changes weights:
        use `reembed` for an index built with them).
        """
        # A fresh copy, not the cached one: training changes the head's weights in place.
        head = classifiers.load(self.directory, classifiers.find(self.store, head_name, "head"))
        return finetune.unfreeze(self.store, self.directory, head, n_layers, epochs=epochs, learning_rate=learning_rate,
                                 batch_size=batch_size, seed=seed, name=head_name, on_epoch=on_epoch)

    def check_reembed_target(self, into: str | os.PathLike) -> Path:
        """The folder for `reembed`, refused when it is this index (before any slow work)."""
        return finetune.reembed_target(self.directory, into)

    def reembed(self, weights_path: str | os.PathLike, into: str | os.PathLike, *,
                head_path: str | os.PathLike | None = None, name: str = HEAD_NAME,
                metrics: dict | None = None, progress: Progress | None = None) -> IndexSummary:
        """Build a new index at `into` with tuned weights over the same images, labels and head copied."""
        return finetune.reembed(self.store, self.directory, weights_path, into, open_index=open_index,
                                head_path=head_path, name=name, metrics=metrics, progress=progress)

    # -- duplicates and similarity ----------------------------------------------------------
    def duplicates(self, threshold: float = DEFAULT_THRESHOLD, *, k: int = DEFAULT_NEIGHBOURS,
                   progress: Progress | None = None) -> list[dupes.DupeGroup]:
        """Groups of near-duplicate images (cosine similarity >= threshold), largest first."""
        self._require_info()
        self.refresh()
        return dupes.duplicate_groups(self.store, self.faiss, threshold, k=k, progress=progress)

    def similarity(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """The cosine-similarity matrix of a few image files (indexed ones reuse their vectors)."""
        paths = list(paths)
        if len(paths) < 2:
            raise VecsearchError(f"A similarity matrix needs at least 2 images, got {len(paths)}.")
        return dupes.similarity_matrix(self.vectors_for(paths))


@contextmanager
def _never() -> Iterator[bool]:
    """`can_save` of a read-only index: the repaired vector file is kept in memory only."""
    yield False


def open_index(path: str | os.PathLike | None = None, *, backbone: str | None = None, weights: Any = _UNSET,
               seed: int | None = None, create: bool = True, batch_size: int | None = None,
               workers: int | None = None, model: Backbone | None = None,
               index_type: str | None = None, read_only: bool | None = None) -> VecIndex:
    """Open (or create) the index at `path` (else $VECSEARCH_INDEX, else the default folder).

    backbone/weights choose the model for a new index (weights: "imagenet", None for the
    seeded random init, or a weights file); for an existing one they must match what built
    it, or IndexMismatchError is raised. `model` passes an already built Backbone.
    index_type picks the FAISS structure: "flat" (exact, the default) or "hnsw" (approximate,
    sub-millisecond on 100k+ vectors); giving another type than an index has converts it,
    rebuilt from the database.
    read_only opens an existing index without writing anything (searches, stats, export
    work; changes are refused); None (the default) does so when the folder or its
    database is not writable by this process.
    """
    if index_type is not None and index_type not in INDEX_TYPES:
        raise VecsearchError(f"Unknown index type {index_type!r}; choose one of: {', '.join(INDEX_TYPES)}.")
    directory = resolve_index_dir(path)
    if directory.exists() and not directory.is_dir():
        raise VecsearchError(f"{directory} is a file, not an index folder: pass --index a folder (new or existing).")
    db = directory / DB_NAME
    if db.exists() and not db.is_file():
        raise IndexCorruptError(f"{db} is not a file: move it away (the index is then empty) or restore it from a backup.")
    if not db.exists():
        if not create:
            raise IndexNotFoundError(f"No index at {directory}. Build one with `vecsearch index PHOTOS` (or pass --index DIR).")
        if read_only:
            raise IndexNotFoundError(f"No index at {directory} to open read-only.")
        directory.mkdir(parents=True, exist_ok=True)
    if read_only is None:
        read_only = db.exists() and not (os.access(directory, os.W_OK) and os.access(db, os.W_OK))
        if read_only:
            log.info("%s is not writable: opening the index read-only", directory)
    if read_only and index_type is not None:
        raise VecsearchError(f"The index at {directory} is read-only here; it cannot be converted to {index_type}.")
    store = Store(db, read_only=read_only)
    try:
        info = store.info()
        if info is None and not create:
            store.require_info()
        requested = None
        if backbone is not None or weights is not _UNSET or seed is not None or model is not None:
            requested = _requested_model(directory, info, backbone, weights, seed, model)
        if info is not None and index_type is not None and index_type != info.index_type:
            log.info("converting %s from %s to %s", directory, info.index_type, index_type)
            store.set_index_type(index_type)
        index = VecIndex(directory, store, backbone=model, requested=requested, batch_size=batch_size,
                         workers=workers, index_type=index_type or "flat")
        if model is not None:
            check_fingerprint(model, info, directory)
        return index
    except BaseException:
        store.close()
        raise


def _requested_model(directory: Path, info, backbone: str | None, weights: Any, seed: int | None,
                     model: Backbone | None) -> tuple[str, WeightsSpec]:
    """(backbone name, WeightsSpec) asked for; for an existing index it must be what built it."""
    name = model.name if model else (backbone or (info.backbone if info else DEFAULT_BACKBONE))
    get_spec(name)
    if model is not None:
        wspec = model.weights
    elif weights is _UNSET:
        wspec = WeightsSpec.recorded(info) if info else WeightsSpec.parse("imagenet" if seed is None else None, seed)
    else:
        wspec = WeightsSpec.parse(weights, seed)
    if info is not None:
        stored = WeightsSpec.recorded(info)
        if name != info.backbone:
            raise IndexMismatchError(
                f"The index at {directory} was built with backbone {info.backbone}, not {name}. "
                "Use the backbone it records (or none), or another index folder for a new index.")
        if wspec.kind != stored.kind or (wspec.kind == "random" and wspec.seed != stored.seed):
            raise IndexMismatchError(
                f"The index at {directory} was built with weights {stored.describe()}, not {wspec.describe()}. "
                "Use the weights it records (or none), or another index folder for a new index.")
    return name, wspec
