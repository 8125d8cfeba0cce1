"""The index object: every feature of vecsearch as a method of `VecIndex`.

An index is a folder: `index.db` (SQLite: images, labels, classifiers, where each vector
lives; the source of truth), `vectors/` (the unit vectors, in shard files) and, for
approximate index types, `vectors.faiss` (+ JSON sidecar), a structure derived from them.
Each method hands its work to the module that owns the concept (`model`, `queries`,
`indexer`, `search`, `labels`, `classes`, `classify`, `finetune`, `dupes`, `explainer`).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Unpack

import numpy as np

from . import classes, classifiers, classify, dupes, explainer, finetune, images, indexer, labels, queries, report

# isort: split
from . import uploads, vector_files, zero_shot
from .backbones import Backbone
from .classes import SEED
from .classifiers import DEFAULT_TOP as CLASSIFY_TOP
from .classifiers import Classification
from .classify import DEFAULT_K as KNN_K
from .config import DEFAULT_K, LOCK_NAME, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, VECTORS_NAME
from .dupes import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD
from .errors import IndexLockedError, ReadOnlyIndexError, ServiceBusyError, VecsearchError
from .explain import OVERLAY_SIDE, Explanation
from .extract import RESAMPLE, Extractor
from .files import FileStream, WriterLock, absolute
from .finetune import DEFAULT_NAME as HEAD_NAME
from .finetune import UnfreezeOptions
from .indexer import IndexSummary, RemoveSummary
from .labels import DEFAULT_TOP as LABEL_TOP
from .model import IndexModel, ModelCall, PrecisionCheck, UploadVectors, embed_to_shards
from .search import (
    DEFAULT_TYPE,
    Hit,
    IndexSpec,
    LiveSearch,
    Searcher,
    SearchFilters,
    allowed_ids,
    check_filters,
)
from .store import ImageRecord, Store, no_annotations, open_folder

Progress = Callable[[int, int], None]

__all__ = ["VecIndex", "Hit", "embed_to_shards"]


class VecIndex:
    """One index: add images, search, label, classify, fine-tune, find duplicates, report.

    The store and the model (`IndexModel`: what embeds, its backbone built on first need
    from what the index records) are passed in. Open one with `open_index` (`opening`).
    """

    def __init__(
        self,
        directory: Path,
        store: Store,
        model: IndexModel | None = None,
        *,
        index_type: str | None = None,
        max_memory: int | None = None,
        progress: Progress | None = None,
    ):
        self.directory = Path(directory)
        self.store = store
        self.read_only = store.read_only
        self.model = model if model is not None else IndexModel(self.directory, store)
        self._lock = WriterLock(self.directory / LOCK_NAME)
        self._loaded = classifiers.LoadedClassifiers(self.directory)  # the server asks for the same ones often
        self._uploads = uploads.GroupCommit(self._commit_uploads)  # concurrent add_bytes calls share commits
        # The structure asked for is recorded only once built: by open_index, or the first write that can train it.
        self.live = LiveSearch(self.directory, store, self._lock, index_type=index_type, max_memory=max_memory, progress=progress)

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

    def refresh(self) -> bool:
        """Reload the vectors if another process changed the index; True if it did."""
        return self.live.refresh()

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyIndexError(
                f"The index at {self.directory} is open read-only (the folder is not writable): "
                "searching and reading work; to change it, fix the folder's permissions."
            )

    @contextmanager
    def _writing(self, wait: float | None = None) -> Iterator[None]:
        """The writer lock (one writer at a time, in any process), for an index that may be written.

        With `wait`, another writer holding it is waited for that long, then ServiceBusyError
        (a server's client retries); without, IndexLockedError at once (a CLI run says so)."""
        self._check_writable()
        with ExitStack() as stack:
            try:
                stack.enter_context(self._lock.held(wait or 0.0))
            except IndexLockedError as e:
                if wait is None:
                    raise
                raise ServiceBusyError(f"{e} (waited {wait:g} s)", retry_after=wait) from e
            yield

    # -- the search structure (`search.live`: built first, recorded only then) --------------
    searcher = property(lambda self: self.live.searcher, doc="The searcher answering now (None before the first image).")
    faiss = property(lambda self: self.live.faiss, doc="The approximate FAISS structure, or None for exact (flat) search.")

    @property
    def structure_note(self) -> str | None:
        """Why the index scans exactly instead of the structure it records (and how to fix it), or None."""
        return self.searcher.note if self.searcher is not None else None

    def _current(self) -> Searcher:
        """The searcher, brought up to date with the database (an index with info always has one)."""
        self.store.require_info()
        self.refresh()
        return self.live.searcher  # type: ignore[return-value]

    def reindex(
        self, *, index_type: str | None = None, max_memory: int | str | None = None, progress: Progress | None = None
    ) -> IndexSpec:
        """Rebuild (retrain and re-tune) the search structure from the stored vectors, as `index_type`."""
        self.store.require_info()
        self._check_writable()
        return self.live.reindex(index_type, max_memory, progress=progress)

    # -- the model (`model.IndexModel`) -----------------------------------------------------
    precision = property(lambda self: self.model.precision, doc="The precision new embeddings use (asked for, else recorded).")
    backbone = property(lambda self: self.model.backbone, doc="The frozen feature extractor, built on first use.")
    precision_check = property(lambda self: self.model.precision_check, doc="Set when another precision was verified.")
    batch_size = property(lambda self: self.model.batch_size)
    workers = property(lambda self: self.model.workers)
    engine = property(lambda self: self.model.engine)

    def check_precision(self, bb: Backbone) -> PrecisionCheck | None:
        """Let a backbone of another precision add to the index only if it agrees (`IndexModel.check_precision`)."""
        return self.model.check_precision(bb)

    def extractor(self) -> Extractor:
        return self.model.extractor()

    def warm_up(self, *, batched: bool = False) -> None:
        """Build the backbone and trace its compiled call now, so the first query doesn't pay for it
        (`batched`: for any batch size, as a micro-batcher makes them)."""
        self.model.warm_up(batched=batched)

    def embed(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Unit vectors (n, dim) for image files, with this index's backbone; a bad file raises BadImageError."""
        return self.model.embed(paths)

    def embed_bytes(self, data: bytes, *, max_pixels: int | None = MAX_IMAGE_PIXELS, **call: Unpack[ModelCall]) -> np.ndarray:
        """Unit vector of an image given as bytes (an upload), decoded exactly as indexing does (before the model loads).
        `call`: the request's deadline and cancel check (`ModelCall`), for a served model."""
        return self.model.embed_bytes(data, max_pixels=max_pixels, **call)

    def embed_uploads(
        self, datas: Iterable[bytes], *, max_pixels: int | None = MAX_IMAGE_PIXELS, **call: Unpack[ModelCall]
    ) -> UploadVectors:
        """Unit vectors of several images as bytes in one model call; the ones that cannot be read are in `failed`."""
        return self.model.embed_uploads(datas, max_pixels=max_pixels, **call)

    def embed_image(self, image) -> np.ndarray:
        """Unit vector of a PIL image, encoded losslessly and decoded exactly as indexing does."""
        return self.model.embed_image(image)

    def vector(self, image_id: int) -> np.ndarray:
        """The stored unit vector of an indexed image."""
        return queries.stored_vector(self.store, image_id)

    def vectors_for(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Unit vectors of image files: an indexed, unchanged file reuses its stored vector."""
        return queries.vectors_for(self.store, self.model, paths)

    # -- indexing -------------------------------------------------------------------------
    def add(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        exclude: Iterable[str] = (),
        progress: Progress | None = None,
        chunk_size: int = indexer.CHUNK_SIZE,
        chunk_seconds: float = indexer.CHUNK_SECONDS,
        wait: float | None = None,
    ) -> IndexSummary:
        """Index image files and folders incrementally (see `indexer.run`).

        New or changed files (size + mtime, then content hash) are embedded; moved or copied
        files reuse stored vectors; entries under the given folders whose files are gone are
        removed. Results are committed in chunks, so a killed run loses at most one chunk and
        the next run resumes from there. `exclude` globs (see `images.is_excluded`) join
        those the index remembers (`exclude`); files they match are skipped, and dropped
        from the index if they were in it. `wait`: seconds to wait for another writer (`_writing`).
        """
        roots, new_globs = [absolute(p) for p in paths], images.check_globs(exclude)
        with self._writing(wait):
            # A damaged index.db is refused before anything is written into it (this reads the
            # database once: a tenth of what the vectors' checksums read).
            self.store.require_sound(full=True)
            files, rejected = indexer.inputs(self.store, roots, self._remember_exclude(new_globs))
            had_structure, repaired = self._begin_add(len(files)), indexer.forget_damaged(self.store)
            summary = indexer.run(
                self.store,
                self.model.embedder,
                roots,
                files,
                progress=progress,
                chunk_size=chunk_size,
                chunk_seconds=chunk_seconds,
                rejected=rejected,
            )
            summary.retrained, summary.repaired = self.live.after_write() and had_structure, repaired
        return summary

    def add_bytes(self, items: Iterable[tuple[str, bytes]], *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> list[dict]:
        """Index images given as (name, bytes) pairs, e.g. uploads (`uploads`): one dict per item,
        {"name", "status": "indexed" | "duplicate" | "failed", "id", "sha256", "path", "reason"}.

        Each is decoded and checked before anything is written, then stored in the index folder
        under its content hash and committed (durable) before this returns; the same bytes again
        are a "duplicate" with the existing id. Concurrent calls share one commit (`GroupCommit`).
        """
        self._check_writable()
        decoded = uploads.decode_all(items, self.model.input_size, max_pixels, RESAMPLE)  # before anything is written
        if all(u.reason is not None for u in decoded):
            return [u.item("failed") for u in decoded]
        return self._uploads.submit(decoded)

    def _commit_uploads(self, batch: list[uploads.Upload]) -> list[dict]:
        with self._writing(uploads.LOCK_WAIT):
            self._begin_add(len(batch))
            items = uploads.commit(self.directory, self.store, self.model.pooled, batch)
            self.live.after_write()
        return items

    def _remember_exclude(self, new_globs: list[str]) -> list[str]:
        if new_globs:
            self.store.set_setting("exclude", images.check_globs([*self.exclude, *new_globs]))
        return self.exclude

    def _begin_add(self, n_files: int) -> bool:
        """Refuse a structure the new total cannot train, before anything is embedded; record the
        model of a new index; True when a search structure is recorded (the add retrains it)."""
        if self.live.wanted_differs():
            self.live.check_wanted(len(self) + n_files, self.info.dim if self.info else self.backbone.dim)
        if self.info is None:
            fields = {k: v for k, v in self.model.meta().items() if k != "vecsearch"}
            self.store.create_info(**fields, index_type=DEFAULT_TYPE, max_memory=None)
        self.refresh()
        return self.live.recorded_spec() is not None

    @property
    def exclude(self) -> list[str]:
        """The exclude globs this index remembers: every `add` skips (and drops) what they match."""
        return list(self.store.setting("exclude", []))

    def set_exclude(self, globs: Iterable[str]) -> list[str]:
        """Replace the remembered exclude globs (an empty list forgets them); the next `add` applies them."""
        globs = images.check_globs(globs)
        with self._writing():
            self.store.set_setting("exclude", globs)
        return globs

    def remove(self, paths: Iterable[str | os.PathLike] = (), *, missing: bool = False) -> RemoveSummary:
        """Drop entries from the index: the given files, and everything inside the given folders.

        Paths are resolved as `add` resolves them and need not exist any more (a deleted
        folder is the usual case). With `missing`, every entry whose file is gone is dropped
        too, wherever it is. The search structure is brought in step before this returns, so
        `search` no longer finds what was removed. A path still on disk is indexed again by
        the next `add` over a folder holding it (see `exclude=` for keeping it out).
        """
        roots = [absolute(p) for p in paths]
        if not roots and not missing:
            raise VecsearchError("Nothing to remove: give files or folders, or missing=True for every entry whose file is gone.")
        self.store.require_info()
        with self._writing():
            self.refresh()
            summary = RemoveSummary()
            records = indexer.records_to_remove(self.store, roots, missing, summary)
            indexer.remove(self.store, records, summary)
            if records:
                self.live.after_write()
        return summary

    def remove_ids(self, ids: Iterable[int]) -> RemoveSummary:
        """Drop images by id (all known, else NotIndexedError before anything changes); the stored
        copy of an upload (under the index's uploads/) is deleted too (`deleted_files`), other files never."""
        self.store.require_info()
        with self._writing(uploads.LOCK_WAIT):
            self.refresh()
            summary, records = RemoveSummary(), uploads.records_for(self.store, ids)
            indexer.remove(self.store, records, summary)
            self.live.after_write()
        summary.deleted_files = uploads.delete_copies(self.directory, records)
        return summary

    # -- search ---------------------------------------------------------------------------
    def search(self, query, k: int = DEFAULT_K, *, include_self: bool = False, **filters: Unpack[SearchFilters]) -> list[Hit]:
        """The k most similar indexed images to a query, best first (cosine similarity).

        The query is an image file path, a vector, image bytes (an upload) or a PIL image.
        A path that is already indexed reuses its stored vector and, unless include_self,
        is left out of its own results. The filters (see `search_vector`) restrict the
        results; k are still returned whenever k images pass them.
        """
        check_filters("search", k, filters)
        if self.searcher is None:
            self.store.require_info()
        q, _, found = queries.query_vector(self.store, self.model, query, "search with")
        exclude = {found} if found is not None and not include_self else set()
        return self.search_vector(q, k, exclude=exclude, **filters)

    def search_vector(
        self, q: np.ndarray, k: int = DEFAULT_K, *, exclude: set[int] | None = None, **filters: Unpack[SearchFilters]
    ) -> list[Hit]:
        """The k indexed images nearest a unit vector, best first; ids in `exclude` left out.

        Filters, all optional and combined with AND:
        under: only images inside this folder (or this file), resolved as `add` resolves paths;
        label: only images taught this class of your own (`teach`);
        predicted: only images the classifier `classifier` (default: the newest saved one,
        as `classify` uses) predicted as this class -- classifiers predict the images
        without a taught label, so the taught ones are `label`'s;
        min_score: only hits at least this similar (cosine, -1..1), so fewer than k may come back.
        A filtered search is still exact: the k best of the images that pass (see `Searcher`).
        """
        id_filters, min_score = check_filters("search_vector", k, filters)
        q = self.live.query(q)
        allowed = allowed_ids(self.store, **id_filters)
        return self.live.search(q, k, exclude=exclude, allowed=allowed, min_score=min_score)

    def embed_text(self, texts: Iterable[str]) -> np.ndarray:
        """Unit vectors (n, dim) of prompts in the image vectors' space (a CLIP or SigLIP backbone)."""
        return self.model.embed_text(list(texts))

    def search_text(self, text: str, k: int = DEFAULT_K, **filters: Unpack[SearchFilters]) -> list[Hit]:
        """The k indexed images that best match a prompt ("a red car"), best first, by the cosine of
        their vectors with its text vector; the filters as `search_vector`'s."""
        check_filters("search_text", k, filters)
        if self.searcher is None:
            self.store.require_info()
        return self.search_vector(self.model.embed_text([text])[0], k, **filters)

    def zero_shot(self, labels: str | Iterable[str], *, prompt: str = zero_shot.DEFAULT_PROMPT) -> classify.TrainResult:
        """Predict every image as one of `labels` ("cat,dog,car") from their prompts alone, with no
        taught examples; scored against the taught labels of those classes where there are any."""
        self.store.require_info()
        return zero_shot.classify(self.store, self.model.embed_text, labels, prompt)

    def similar(self, image_id: int, k: int = DEFAULT_K, **filters: Unpack[SearchFilters]) -> list[Hit]:
        """Neighbours of an indexed image by its stored vector (no model call), itself left out.

        The filters are `search_vector`'s.
        """
        self.store.require_info()
        self.refresh()
        return self.search_vector(self.vector(image_id), k, exclude={image_id}, **filters)

    # -- images ---------------------------------------------------------------------------
    def image(self, image_id: int) -> ImageRecord:
        """The record of one image (ok or failed)."""
        return queries.record(self.store, image_id)

    def original(self, image_id: int, *, max_bytes: int = MAX_IMAGE_BYTES) -> FileStream:
        """The file of an indexed image, opened to be read once in chunks (iterate it, or close it).

        Found by id only, and only when it is still the file that was indexed: status ok, the
        size and mtime recorded, and bytes Pillow knows as an image. What a path holds now may
        be something else (a link repointed, a file replaced); that is refused as not indexed.
        """
        return queries.original(self.store, image_id, max_bytes=max_bytes)

    def images(self, offset: int = 0, limit: int = 100, status: str | None = None) -> tuple[int, list[ImageRecord]]:
        """(total, one page of image records by id), all or only "ok" / "failed" ones."""
        queries.check_status(status)
        return self.store.page_images(offset, limit, status)

    def __iter__(self) -> Iterator[ImageRecord]:
        """Every image record (ok and failed) by id, read from the database a page at a time."""
        return self.iter_images()

    def iter_images(
        self, *, status: str | None = None, under: str | os.PathLike | None = None, label: str | None = None
    ) -> Iterator[ImageRecord]:
        """Image records by id, streamed a page at a time: all, or only those of a `status`
        ("ok" / "failed"), inside the folder `under`, or taught the class `label`."""
        queries.check_status(status)
        folders = [str(absolute(under))] if under is not None else []
        ids = self.store.ids_with_user_label(str(label)) if label is not None else None
        return self.store.iter_images(status=status, under=folders, ids=ids)

    def failed(self) -> list[ImageRecord]:
        """Images that could not be embedded, with their reasons, by path."""
        return self.store.failed()

    def annotations(self, ids: Iterable[int], *, top: int = 5) -> dict[int, dict]:
        """{id: {"imagenet_labels", "user_label", "predictions"}}, every id present (empty when none)."""
        ids = [int(i) for i in ids]
        stored = self.store.annotations(ids, top=top)
        return {i: stored.get(i) or no_annotations() for i in ids}

    def stats(self) -> dict:
        """Counts, model, index_type and sizes on disk (`report.stats`)."""
        info = self.store.require_info()
        self.refresh()
        return report.stats(self.directory, self.store, info, self.live, self.exclude)

    def export(self, out: str | os.PathLike, *, progress: Progress | None = None) -> int:
        """Write every indexed vector with its path, norm, file facts and model to .npz or .parquet.

        The suffix decides the format; `import` reads either back. Streams in batches.
        """
        return vector_files.export_index(self.store, out, self.model.meta(self.store.require_info()), progress)

    def import_vectors(
        self, source: str | os.PathLike, *, unchecked: bool = False, progress: Progress | None = None
    ) -> vector_files.ImportSummary:
        """Add precomputed vectors from .npz / .parquet files (a file, or a folder of them).

        Paths are taken as given: the files need not exist here (the next `add` over their
        folder reconciles them). Vectors of another dimension are always refused, and of
        another model (weights fingerprint) unless `unchecked` and the file names none.
        An empty index takes its model from the first file.
        """
        self._check_writable()
        started, info = time.perf_counter(), self.info
        # Every file is checked before anything is written.
        checked = vector_files.check_import(source, self.model.meta(info) if info else None, unchecked, self.directory)
        if info is not None:
            self.model.check_imported_precisions(checked.precisions)
        self.live.check_wanted((len(self) if info else 0) + checked.rows, int(checked.model["dim"]))
        with self._writing():
            summary = vector_files.import_files(self.store, checked, create=self.info is None, progress=progress)
            self.live.after_write()
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary

    # -- ImageNet labels ------------------------------------------------------------------
    def label(
        self,
        *,
        paths: Iterable[str | os.PathLike] | None = None,
        top: int = LABEL_TOP,
        only_missing: bool = False,
        weights: Any = None,
        progress: Progress | None = None,
    ) -> labels.LabelSummary:
        """Store the top ImageNet classes of indexed images (all, or those under `paths`), from their stored vectors."""
        ids = labels.ids_for_paths(self.store, paths) if paths else None
        return labels.label_images(
            self.store, self.directory, top=top, ids=ids, only_missing=only_missing, weights=weights, progress=progress
        )

    def image_labels(self, paths: Iterable[str | os.PathLike] | None = None) -> list[labels.ImageLabels]:
        """Stored ImageNet labels of indexed files/folders (all labelled images when None), by path."""
        return labels.image_labels(self.store, list(paths) if paths else None)

    def search_labels(self, name: str, limit: int | None = None) -> list[labels.LabelHit]:
        """Images whose stored ImageNet top-k holds a class (name or WordNet id), most probable first."""
        return labels.images_with_label(self.store, name, limit)

    def imagenet_coverage(self) -> tuple[int, int]:
        """(images with stored ImageNet labels, images with a vector): how much of the index a class listing sees."""
        return len(self.store.imagenet_labelled_ids()), len(self)

    def imagenet_probabilities(self, ids: Iterable[int] | None = None, weights: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities over the 1000 ImageNet classes) of indexed images; nothing is stored."""
        return labels.probabilities(self.store, self.directory, ids, weights)

    # -- classes of your own and classifiers ------------------------------------------------
    def teach(
        self, source: str | os.PathLike, *, replace: bool = False, progress: Progress | None = None
    ) -> classes.TeachSummary:
        """Label images with classes of your own from class folders or a CSV; unindexed files are indexed first."""
        plan = classes.plan_teach(self.store, source)
        if plan.to_index:
            plan.summary.indexed = self.add(plan.to_index, progress=progress).indexed
        return classes.apply_teach(self.store, plan, replace=replace)

    def set_label(self, image_id: int, label: str, split: str | None = None) -> dict:
        """Give one image a class of your own (as `teach` does; split "train", "test" or None)."""
        with self._writing(uploads.LOCK_WAIT):
            return classes.set_label(self.store, image_id, label, split)

    def clear_label(self, image_id: int) -> dict:
        """Forget one image's class of your own."""
        with self._writing(uploads.LOCK_WAIT):
            return classes.clear_label(self.store, image_id)

    def label_counts(self) -> dict[str, dict[str, int]]:
        """{class: {split or "": images}} of the user's labels."""
        return classes.label_counts(self.store)

    def train_classifier(self, kind: str, *, k: int = KNN_K, name: str | None = None, seed: int = SEED) -> classify.TrainResult:
        """Train (knn or probe), evaluate, save, and predict every unlabelled image."""
        self.store.require_info()
        self._check_writable()
        return classify.train(self.store, self.directory, kind, k=k, name=name, seed=seed)

    def apply_classifier(self, name: str | None = None, kind: str | None = None) -> classify.TrainResult:
        """Predict every unlabelled image with a saved classifier (the newest, or `name`)."""
        self.store.require_info()
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
        return row, self._loaded.get(row)

    def classify(
        self,
        query,
        *,
        name: str | None = None,
        kind: str | None = None,
        top: int = CLASSIFY_TOP,
        model: tuple[dict, Any] | None = None,
    ) -> Classification:
        """Classify one image (a file path, image bytes, a PIL image or a vector) with a saved classifier.

        An indexed, unchanged file reuses its stored vector. `model` passes a (row, model)
        from `classifier()` already loaded (the server caches them).
        """
        if model is None:
            classifiers.find(self.store, name, kind)  # none saved: said before the query costs a model load
        vector, path, _ = queries.query_vector(self.store, self.model, query, "classify")  # a bad file: before any model
        row, clf = model or self.classifier(name, kind)
        where = None if path is None else str(path)
        return self.model.run(classifiers.classification, clf, row, vector, top=top, path=where)  # a head is a Keras model too

    # -- fine-tuning ----------------------------------------------------------------------
    def finetune(
        self,
        *,
        name: str = HEAD_NAME,
        params: finetune.HeadParams | None = None,
        on_epoch: Callable[[int, dict], None] | None = None,
    ) -> finetune.FinetuneResult:
        """Train a Keras head on the labelled vectors, score it, save it as classifier `name`."""
        self.store.require_info()
        return finetune.finetune(self.store, self.directory, name=name, params=params, on_epoch=on_epoch)

    def unfreeze(self, head_name: str, n_layers: int, **options: Unpack[UnfreezeOptions]) -> dict:
        """Fine-tune the backbone's last `n_layers` end to end with saved head `head_name` on top.

        `options`: epochs, learning_rate, batch_size, seed, on_epoch (`finetune.UnfreezeOptions`).
        The tuned weights are written to a file (the index itself never changes weights:
        use `reembed` for an index built with them).
        """
        finetune.check_unfreeze_options(options)
        # A fresh copy, not the cached one: training changes the head's weights in place.
        head = classifiers.load(self.directory, classifiers.find(self.store, head_name, "head"))
        return finetune.unfreeze(self.store, self.directory, head, n_layers, name=head_name, **options)

    def check_reembed_target(self, into: str | os.PathLike) -> Path:
        """The folder for `reembed`, refused when it is this index (before any slow work)."""
        return finetune.reembed_target(self.directory, into)

    def reembed(
        self,
        weights_path: str | os.PathLike,
        into: str | os.PathLike,
        *,
        head_path: str | os.PathLike | None = None,
        name: str = HEAD_NAME,
        metrics: dict | None = None,
        progress: Progress | None = None,
    ) -> IndexSummary:
        """Build a new index at `into` with tuned weights over the same images, labels and head copied."""
        plan = finetune.plan_reembed(self.store, self.directory, weights_path, into)
        with closing(open_folder(plan.into, create=True, read_only=False, restructure=False)) as store:
            model = IndexModel.for_index(plan.into, store, None, plan.backbone, str(plan.weights), None, {})
            new = VecIndex(plan.into, store, model)
            summary = new.add(plan.paths, progress=progress)
            finetune.carry_over(plan, new.store, new.directory, head_path=head_path, name=name, metrics=metrics)
        return summary

    # -- explanations (`explainer`) -----------------------------------------------------------
    def explain(self, image, **options: Unpack[explainer.ExplainOptions]) -> Explanation:
        """A heatmap of where in `image` the evidence for a score lies (see `explain`).

        The score is the ImageNet class `imagenet_class` (name or WordNet id; default: the
        image's top-1), the class `label` of saved classifier `classifier` (default: its
        prediction), or the cosine similarity to `like`. `image` is a file path, image
        bytes, a PIL image or an indexed image's id; `like` the same or a vector. `weights`
        is where the ImageNet top comes from, as for `label`. `side` is the overlay's
        longest side in pixels; `max_pixels` the decoding cap (`explainer.ExplainOptions`).
        """
        return explainer.explain(self._explainer(), image, **explainer.check_options(options))

    def explain_hits(
        self, query, hits: Iterable[Hit], *, side: int = OVERLAY_SIDE, max_pixels: int | None = MAX_IMAGE_PIXELS
    ) -> list[tuple[Explanation, Explanation]]:
        """For each search hit, (the query's map against it, its map against the query): why they are similar.

        The query is read and run through the model once; each hit's file once.
        """
        return explainer.explain_hits(self._explainer(), query, hits, side=side, max_pixels=max_pixels)

    def explain_hits_to(self, query, hits: list[Hit], out_dir: str | os.PathLike, *, side: int = OVERLAY_SIDE) -> list[Path]:
        """Write one PNG per hit into `out_dir`: the query's "why similar" map beside the hit's."""
        return explainer.save_pairs(hits, self.explain_hits(query, hits, side=side), Path(out_dir))

    def _explainer(self) -> explainer.Parts:
        return explainer.Parts(self.store, self.directory, self.model, self._loaded)

    # -- duplicates and similarity ----------------------------------------------------------
    def duplicates(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        k: int = DEFAULT_NEIGHBOURS,
        keep: str | None = None,
        progress: Progress | None = None,
    ) -> list[dupes.DupeGroup]:
        """Groups of near-duplicate images (cosine similarity >= threshold), largest first.

        With `keep` ("oldest" or "largest", see `dupes.KEEP_RULES`) each group also says which
        image to keep and which to remove (`DupeGroup.keep`, `.remove`).
        """
        dupes.check_keep(keep)
        groups = dupes.duplicate_groups(self.store, self._current(), threshold, k=k, progress=progress)
        if keep is not None:
            dupes.choose_keepers(self.store, groups, keep)
        return groups

    def similarity(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """The cosine-similarity matrix of a few image files (indexed ones reuse their vectors)."""
        paths = list(paths)
        if len(paths) < 2:
            raise VecsearchError(f"A similarity matrix needs at least 2 images, got {len(paths)}.")
        return dupes.similarity_matrix(self.vectors_for(paths))
