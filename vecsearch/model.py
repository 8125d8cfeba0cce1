"""What embeds for one index: the weights asked for or recorded, the precision, the lazy backbone.

`IndexModel` is the one place the index's model is resolved, built, checked and called:
`embedder()` chooses between the in-process extractor and the Ray engine (for `add` and
for `embed --out` shards), `embed*` turn files, bytes and pixels into unit vectors, and
`meta()` is the model dict that export, shards and a new index's info record. Every call
into a Keras model goes through here, under one lock: a Keras model is not safe to call from
several threads. When the service starts a micro-batcher (`start_batcher`), every call of
`embed_pixels` (uploads searched, embedded, classified or added) goes through it, so
concurrent requests share model calls; the CLI and the library run without one.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypedDict, TypeVar

import numpy as np

from . import embed_job, explain, images, indexer, ray_engine
from .backbones import (
    DEFAULT_BACKBONE,
    DEFAULT_PRECISION,
    MIXING_MIN_COSINE,
    Backbone,
    WeightsSpec,
    check_fingerprint,
    check_precision,
    get_spec,
    load_backbone,
    no_text_tower,
    recorded_precision,
)
from .batching import DEFAULT_MAX_DELAY, MicroBatcher
from .config import MAX_IMAGE_PIXELS, VERSION, serve_batch_size
from .errors import (
    BadImageError,
    IndexMismatchError,
    InputNotFoundError,
    RequestDroppedError,
    VecsearchError,
    check_keywords,
)
from .extract import RESAMPLE, Extractor
from .files import absolute
from .store import Store
from .vectors import normalize

log = logging.getLogger(__name__)

T = TypeVar("T")

EMBED_CHUNK = 64
"""Files `embed` decodes before each model call: a query's few at once, a long list in bounded memory."""

PRECISION_CHECK_IMAGES = 8
"""Stored images re-embedded to decide whether another precision may add to an index."""

UNSET: Any = object()
"""Weights not given: a new index takes ImageNet (the seeded random init with a seed), an existing one its own."""


class ModelOptions(TypedDict, total=False):
    """How an index embeds new images (see `open_index`); the index records none of them but precision."""

    batch_size: int | None
    workers: int | None
    precision: str | None
    engine: str
    ray_address: str | None
    gpus_per_worker: float | None


MODEL_OPTIONS = ("batch_size", "workers", "precision", "engine", "ray_address", "gpus_per_worker")


@dataclass
class PrecisionCheck:
    """An index of one precision opened with the other: stored vectors re-embedded and compared."""

    index_precision: str
    precision: str
    images: int  # stored vectors compared
    min_cosine: float

    def to_dict(self) -> dict:
        return asdict(self)


class ModelCall(TypedDict, total=False):
    """What a served request tells its model call: `deadline` (time.monotonic()) and `cancelled()`;
    past the one or true the other before the call starts, it is dropped (RequestDroppedError)."""

    deadline: float | None
    cancelled: Callable[[], bool] | None


@dataclass
class UploadVectors:
    """Vectors of several uploads in one model call: `vectors[i]` is upload `rows[i]`;
    `failed` maps each upload that could not be decoded to its reason."""

    vectors: np.ndarray
    rows: list[int]
    failed: dict[int, str]


MAX_TEXT_CHARS = 1000
"""Longest prompt accepted: the towers read 64-77 tokens, so more only costs the tokenizer."""
MAX_TEXTS = 1000
"""Most prompts in one call (zero-shot labels, a request's texts)."""


def check_texts(texts: Sequence[str]) -> list[str]:
    """Prompts as the text towers take them: 1 to MAX_TEXTS non-empty strings of at most MAX_TEXT_CHARS."""
    if isinstance(texts, str):
        texts = [texts]
    out = list(texts)
    if not out:
        raise VecsearchError("No text given: give at least one prompt.", option="text")
    if len(out) > MAX_TEXTS:
        raise VecsearchError(f"{len(out)} prompts is more than {MAX_TEXTS} at once.", option="text")
    for t in out:
        if not isinstance(t, str) or not t.strip():
            raise VecsearchError("A prompt is empty: give some words to search for.", option="text")
        if len(t) > MAX_TEXT_CHARS:
            raise VecsearchError(f"A prompt of {len(t)} characters is longer than {MAX_TEXT_CHARS}.", option="text")
    return out


def read_pixels(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A file decoded as `Extractor` decodes it, with its reasons (a decoder's own bug too) as BadImageError."""
    try:
        return images.read_image_file(path, size, resample=RESAMPLE).pixels
    except BadImageError as e:
        raise BadImageError(e.reason, str(path)) from e
    except Exception as e:  # as Extractor.embed_files: one bad file is a reason, never a traceback
        raise BadImageError(f"unreadable: {type(e).__name__}: {e}", str(path)) from e


def png_bytes(image: Any) -> bytes:
    """A PIL image encoded losslessly, so it is decoded exactly as indexing decodes a file."""
    buf = io.BytesIO()
    try:
        image.save(buf, format="PNG")
    except (AttributeError, OSError, ValueError) as e:
        raise BadImageError(f"cannot encode this image: {e}") from e
    return buf.getvalue()


def requested_model(
    directory: Path, info: Any, backbone: str | None, weights: Any, seed: int | None, model: Backbone | None
) -> tuple[str, WeightsSpec]:
    """(backbone name, WeightsSpec) asked for; for an existing index it must be what built it."""
    name = model.name if model else (backbone or (info.backbone if info else DEFAULT_BACKBONE))
    get_spec(name)
    if model is not None:
        wspec = model.weights
    elif weights is UNSET:
        wspec = WeightsSpec.recorded(info) if info else WeightsSpec.parse("imagenet" if seed is None else None, seed)
    else:
        wspec = WeightsSpec.parse(weights, seed)
    if info is not None:
        stored = WeightsSpec.recorded(info)
        if name != info.backbone:
            raise IndexMismatchError(
                f"The index at {directory} was built with backbone {info.backbone}, not {name}. "
                "Give no backbone (the index uses the one it records), or another index folder for a new index.",
                option="recorded_model",
            )
        if wspec.kind != stored.kind or (wspec.kind == "random" and wspec.seed != stored.seed):
            raise IndexMismatchError(
                f"The index at {directory} was built with weights {stored.describe()}, not {wspec.describe()}. "
                "Give no weights (the index uses the ones it records), or another index folder for a new index.",
                option="recorded_model",
            )
    return name, wspec


class IndexModel:
    """The model of one index (or of an `embed --out` job, `store` None): built on first need.

    `requested` is the (backbone, weights) asked for; None: what the index records (the
    default backbone with ImageNet weights for a new one). `precision` None: the recorded one.
    """

    def __init__(
        self,
        directory: Path,
        store: Store | None,
        backbone: Backbone | None = None,
        *,
        requested: tuple[str, WeightsSpec] | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        precision: str | None = None,
        engine: str = "local",
        ray_address: str | None = None,
        gpus_per_worker: float | None = None,
    ):
        self.directory = Path(directory)
        self.store = store
        self.batch_size = batch_size
        self.workers = workers  # decode threads in-process; model actors with the Ray engine
        self.engine = ray_engine.check_engine(engine)
        self.ray_address, self.gpus_per_worker = ray_address, gpus_per_worker
        self._backbone = backbone
        if requested is None and backbone is not None:
            requested = (backbone.name, backbone.weights)
        self._requested = requested
        # None: the precision the index records (float32 for a new one).
        self._precision = check_precision(precision) if precision is not None else None
        self.precision_check: PrecisionCheck | None = None  # set when another precision was verified
        # One model call at a time: a Keras model is not safe to call from several threads.
        self._lock = threading.Lock()
        self._feature_maps: explain.FeatureMaps | None = None  # built on the first explanation
        self.batcher: MicroBatcher | None = None  # None: each embed_pixels is its own model call

    @property
    def info(self) -> Any:
        return self.store.info() if self.store is not None else None

    # -- what to build ----------------------------------------------------------------------
    def weights(self, info: Any) -> WeightsSpec:
        """The weights to build: those asked for, else those `info` records (ImageNet for a new index)."""
        if self._requested:
            return self._requested[1]
        return WeightsSpec.recorded(info) if info is not None else WeightsSpec("imagenet")

    @property
    def name(self) -> str:
        """The backbone's name, known without building it: the built one's, the index's, else the one asked for."""
        if self._backbone is not None:
            return self._backbone.name
        info = self.info
        if info is not None:
            return info.backbone
        return self._requested[0] if self._requested else DEFAULT_BACKBONE

    @property
    def input_size(self) -> tuple[int, int]:
        """The backbone's input (width, height), from the registry: images are decoded before the model is built."""
        return get_spec(self.name).input_size

    @property
    def precision(self) -> str:
        """The compute precision new embeddings use: the one asked for, else the one the index records."""
        if self._precision is not None:
            return self._precision
        if self._backbone is not None:
            return self._backbone.precision
        info = self.info
        return recorded_precision(info) if info is not None else DEFAULT_PRECISION

    @property
    def backbone(self) -> Backbone:
        """The frozen feature extractor, built on first use from what the index records."""
        if self._backbone is None:
            info = self.info
            bb = load_backbone(self.name, self.weights(info), precision=self.precision)
            if info is not None:
                check_fingerprint(bb, info, self.directory)
                self.check_precision(bb)
            self._backbone = bb
        return self._backbone

    def meta(self, info: Any = None) -> dict:
        """The model dict vectors are recorded with: `info`'s, else the built backbone's (a new index, shards)."""
        if info is not None:
            return {
                "backbone": info.backbone,
                "weights_kind": info.weights_kind,
                "weights_seed": info.weights_seed,
                "weights_path": info.weights_path,
                "weights_fingerprint": info.weights_fingerprint,
                "dim": info.dim,
                "metric": info.metric,
                "precision": recorded_precision(info),
                "vecsearch": VERSION,
            }
        bb = self.backbone
        return {
            "backbone": bb.name,
            "weights_kind": bb.weights.kind,
            "weights_seed": bb.weights.seed,
            "weights_path": bb.weights.path,
            "weights_fingerprint": bb.fingerprint,
            "dim": bb.dim,
            "metric": "cosine",
            "precision": bb.precision,
            "vecsearch": VERSION,
        }

    def check_precision(self, bb: Backbone) -> PrecisionCheck | None:
        """Let a backbone of another precision than the index records add to it only if it agrees.

        Up to PRECISION_CHECK_IMAGES indexed images whose files are unchanged are embedded
        again with `bb` and compared with their stored vectors: at a minimum cosine of
        MIXING_MIN_COSINE or more the two precisions share the index (the result is kept in
        `precision_check`); below it IndexMismatchError. None when the precisions match.
        """
        info = self.info
        if info is None or bb.precision == recorded_precision(info):
            return None
        assert self.store is not None  # an index's info comes from its store
        recorded = recorded_precision(info)
        paths, ids = self._unchanged_sample()
        if not ids:
            if len(self.store.vector_ids()):
                raise IndexMismatchError(
                    f"The index at {self.directory} was built in {recorded} precision, and none of its indexed files "
                    f"is here unchanged to check that {bb.precision} embeddings agree with it. Embed with precision={recorded!r}.",
                    option="precision",
                )
            self.precision_check = PrecisionCheck(recorded, bb.precision, 0, 1.0)
            return self.precision_check
        got = {item.path: item.vector for item in Extractor(bb, self.batch_size, self.workers).embed_files(paths)}
        stored_ids, stored, _ = self.store.vectors(ids, dim=info.dim)
        stored_by_id = dict(zip((int(i) for i in stored_ids), stored, strict=False))
        pairs = [
            (v, stored_by_id[i]) for p, i in zip(paths, ids, strict=False) if (v := got.get(p)) is not None and i in stored_by_id
        ]
        if not pairs:
            raise IndexMismatchError(
                f"The index at {self.directory} was built in {recorded} precision, and its indexed files could not "
                f"be read again to check that {bb.precision} embeddings agree with it. Embed with precision={recorded!r}.",
                option="precision",
            )
        cosines = np.nan_to_num([float(np.dot(a.astype(np.float64), b.astype(np.float64))) for a, b in pairs], nan=-1.0)
        check = PrecisionCheck(recorded, bb.precision, len(pairs), round(float(cosines.min()), 6))
        if not check.min_cosine >= MIXING_MIN_COSINE:
            raise IndexMismatchError(
                f"The index at {self.directory} was built in {recorded} precision; {bb.precision} embeddings of "
                f"{check.images} of its images agree with the stored vectors only to cosine {check.min_cosine:.4f} "
                f"(at least {MIXING_MIN_COSINE} is needed to share an index). Embed with precision={recorded!r}, "
                "or build a new index in another folder.",
                option="precision",
            )
        log.info(
            "%s embeddings agree with the %s index (min cosine %.5f over %d images): accepted",
            bb.precision,
            recorded,
            check.min_cosine,
            check.images,
        )
        self.precision_check = check
        return check

    @staticmethod
    def check_options(model: Backbone | None, options: Mapping[str, Any]) -> None:
        """The model options of `open_index`, refused before anything is opened (a misspelt one too)."""
        check_keywords("open_index", options, MODEL_OPTIONS)
        ray_engine.check_engine(options.get("engine", "local"))
        precision = options.get("precision")
        if precision is not None:
            check_precision(precision)
        if model is not None and precision is not None and model.precision != precision:
            raise VecsearchError(f"The model passed is built in {model.precision} precision, not {precision}.")

    @classmethod
    def for_index(
        cls,
        directory: Path,
        store: Store,
        model: Backbone | None,
        backbone: str | None,
        weights: Any,
        seed: int | None,
        options: ModelOptions,
    ) -> IndexModel:
        """The model an opened index embeds with: what was asked for, checked against what the index records."""
        info = store.info()
        requested = None
        if backbone is not None or weights is not UNSET or seed is not None or model is not None:
            requested = requested_model(directory, info, backbone, weights, seed, model)
        index_model = cls(directory, store, model, requested=requested, **options)
        if model is not None:
            check_fingerprint(model, info, directory)
            index_model.check_precision(model)
        return index_model

    def check_other_precision(self, precision: str) -> PrecisionCheck | None:
        """`check_precision` for vectors of `precision` made elsewhere (an import): a backbone built to compare."""
        info = self.info
        return self.check_precision(load_backbone(info.backbone, self.weights(info), precision=precision))

    def check_imported_precisions(self, precisions: set[str]) -> None:
        """Vectors of another precision than the index's come in only if that precision agrees
        with the stored vectors (`check_precision`, embedding a few indexed images both ways)."""
        info = self.info
        for precision in sorted(precisions - {recorded_precision(info)}):
            self.check_other_precision(precision)

    def _unchanged_sample(self) -> tuple[list[Path], list[int]]:
        """(paths, ids) of up to PRECISION_CHECK_IMAGES indexed images whose files are unchanged."""
        assert self.store is not None
        paths: list[Path] = []
        ids: list[int] = []
        for chunk_ids, _, _ in self.store.iter_vectors(chunk=256):
            recs = self.store.images(chunk_ids)
            for i in chunk_ids:
                rec = recs.get(int(i))
                if rec is not None and rec.status == "ok" and indexer.is_unchanged(rec, Path(rec.path)):
                    paths.append(Path(rec.path))
                    ids.append(int(i))
                if len(ids) == PRECISION_CHECK_IMAGES:
                    return paths, ids
        return paths, ids

    # -- what embeds ------------------------------------------------------------------------
    def extractor(self) -> Extractor:
        return Extractor(self.backbone, self.batch_size, self.workers)

    def embedder(self, *, ordered: bool = False) -> Extractor | ray_engine.RayEngine:
        """What `add` and `embed --out` embed with: the in-process extractor, or the Ray engine
        (`ordered`: results in input order). Queries always stay in-process."""
        if self.engine == "local":
            return self.extractor()
        info = self.info
        if info is None or self.precision != recorded_precision(info):
            # Shards record the built model's fingerprint; another precision than an index
            # records is checked against its stored vectors here (or refused).
            _ = self.backbone
        meta = self.meta(info)
        recipe = ray_engine.ModelRecipe.for_model(
            meta["backbone"],
            self.weights(info),
            batch_size=self.batch_size,
            fingerprint=meta["weights_fingerprint"],
            precision=self.precision,
        )
        return ray_engine.RayEngine(
            recipe, address=self.ray_address, workers=self.workers, gpus_per_worker=self.gpus_per_worker, ordered=ordered
        )

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` holding the model lock: a fine-tuned head is a Keras model too."""
        with self._lock:
            return fn(*args, **kwargs)

    def embed_pixels(
        self, pixels: np.ndarray, *, deadline: float | None = None, cancelled: Callable[[], bool] | None = None
    ) -> np.ndarray:
        """Unit vectors of decoded images (n, height, width, 3), one model call at a time.

        With a batcher running, the rows ride in a batch with other callers' (ServiceBusyError
        when its queue is full). `deadline` (time.monotonic()) passed or `cancelled()` true before
        the model call: RequestDroppedError, the model never runs for them.
        """
        return normalize(self.pooled(pixels, deadline=deadline, cancelled=cancelled))

    def pooled(
        self, pixels: np.ndarray, *, deadline: float | None = None, cancelled: Callable[[], bool] | None = None
    ) -> np.ndarray:
        """Raw pooled features of decoded images, as `embed_pixels` (whose rows are these, normalised):
        a write keeps their lengths, which the ImageNet top needs (`labels`)."""
        batcher = self.batcher
        if batcher is not None and not batcher.in_worker():
            return batcher.embed(pixels, deadline=deadline, cancelled=cancelled)
        with self._lock:
            if (deadline is not None and time.monotonic() >= deadline) or (cancelled is not None and cancelled()):
                raise RequestDroppedError("Request dropped before its model call: its deadline passed or it was cancelled.")
            return self.extractor().pooled(pixels)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (n, dim) of prompts, in the image vectors' space: a backbone with a text tower
        (CLIP, SigLIP) only, said before any model loads for one without."""
        texts = check_texts(texts)
        if not get_spec(self.name).text:
            raise no_text_tower(self.name)
        tower = self.backbone.text_tower()
        with self._lock:
            return normalize(tower.vectors(texts))

    def start_batcher(
        self, *, max_batch: int | None = None, max_delay: float = DEFAULT_MAX_DELAY, max_queue: int | None = None
    ) -> MicroBatcher:
        """Send every `embed_pixels` through one `MicroBatcher` (the service's); its model calls take the lock.

        `max_batch` None: the model's batch size when one was asked for, else `serve_batch_size`;
        `max_queue` None: 4 batches' worth of requests. Refused while one runs already.
        """
        if self.batcher is not None:
            raise VecsearchError("This model already has a batcher running: stop it first.")
        size = max_batch or self.batch_size or serve_batch_size(self.backbone.precision)

        def run(pixels: np.ndarray) -> np.ndarray:
            with self._lock:  # explanations and fine-tuned heads call Keras outside the batcher
                return Extractor(self.backbone, size, self.workers).pooled(pixels)

        self.batcher = MicroBatcher(run, max_batch=size, max_delay=max_delay, max_queue=max_queue)
        return self.batcher

    def stop_batcher(self) -> None:
        """Stop the batcher (waiting requests are refused); model calls are direct again."""
        batcher, self.batcher = self.batcher, None
        if batcher is not None:
            batcher.stop()

    def warm_up(self, *, batched: bool = False) -> None:
        """Build the backbone and trace its compiled call now, so the first query doesn't pay for it.

        `batched`: a batch of two too. Keras traces a second batch size once more, with the batch
        dimension left open, and every later size reuses it (measured: ~10 s for ResNet50 on this
        CPU, that the first shared model call would otherwise pay).
        """
        w, h = self.backbone.input_size
        self.embed_pixels(np.zeros((1, h, w, 3), np.uint8))
        if batched:
            self.embed_pixels(np.zeros((2, h, w, 3), np.uint8))

    def embed(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Unit vectors (n, dim) for image files; a bad file raises BadImageError.

        Files are read and decoded (as indexing does) a chunk at a time before the model is
        called, so a bad query file is refused before the model's start-up, and memory stays
        at one chunk of pixels however many paths come (`add` decodes in threads instead).
        """
        size = self.input_size
        out: list[np.ndarray] = []
        it = iter(paths)
        while chunk := [read_pixels(Path(p), size) for p in itertools.islice(it, EMBED_CHUNK)]:
            out.append(self.embed_pixels(np.stack(chunk)))
        if not out:
            return np.zeros((0, get_spec(self.name).dim), np.float32)
        return np.concatenate(out)

    def embed_bytes(
        self,
        data: bytes,
        *,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Unit vector of an image given as bytes (an upload), decoded exactly as indexing does (before the model loads)."""
        pixels, _, _ = images.decode_image(data, self.input_size, max_pixels=max_pixels, resample=RESAMPLE)
        return self.embed_pixels(pixels[None], deadline=deadline, cancelled=cancelled)[0]

    def embed_uploads(
        self,
        datas: Iterable[bytes],
        *,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> UploadVectors:
        """Unit vectors of several images given as bytes, decoded first, then one model call for all
        that decoded; a bad one is reported in `failed`, never raised (the others still count).
        `deadline` and `cancelled` as for `embed_pixels`."""
        pixels, rows, failed = [], [], {}
        for i, data in enumerate(datas):
            try:
                pixels.append(images.decode_image(data, self.input_size, max_pixels=max_pixels, resample=RESAMPLE)[0])
                rows.append(i)
            except BadImageError as e:
                failed[i] = e.reason
        if not pixels:
            return UploadVectors(np.zeros((0, get_spec(self.name).dim), np.float32), rows, failed)
        return UploadVectors(self.embed_pixels(np.stack(pixels), deadline=deadline, cancelled=cancelled), rows, failed)

    def embed_image(self, image: Any) -> np.ndarray:
        """Unit vector of a PIL image, encoded losslessly and decoded exactly as indexing does."""
        return self.embed_bytes(png_bytes(image))

    # -- explanations ---------------------------------------------------------------------------
    def maps(self) -> explain.FeatureMaps:
        """The backbone's feature-map model, built on the first explanation (under the lock: a Keras call too)."""
        with self._lock:
            if self._feature_maps is None or self._feature_maps.backbone is not self.backbone:
                self._feature_maps = explain.FeatureMaps(self.backbone)
            return self._feature_maps

    def decode(self, data: bytes, path: str | None, max_pixels: int | None) -> np.ndarray:
        """The image decoded at the model's input size, as `explain.look` does: a bad file fails before the model loads."""
        try:
            return images.decode_image(data, self.input_size, max_pixels=max_pixels, resample=RESAMPLE)[0]
        except BadImageError as e:
            raise BadImageError(e.reason, path=path) from e

    def look(
        self, data: bytes, path: str | None, *, side: int, max_pixels: int | None, pixels: np.ndarray | None = None
    ) -> explain.Seen:
        """An image as the model sees it, with its feature map (`explain.look`)."""
        return explain.look(self.maps(), data, path=path, max_pixels=max_pixels, side=side, lock=self._lock, pixels=pixels)


def embed_to_shards(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    backbone: str | None = None,
    weights: Any = UNSET,
    seed: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    gpus_per_worker: float | None = None,
    shard_size: int = embed_job.SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
    precision: str = DEFAULT_PRECISION,
) -> embed_job.EmbedSummary:
    """Embed image files and folders into Parquet shards in `out`, touching no index (`embed_job`).

    The model flags mean what they mean for a new index (default resnet50, ImageNet
    weights); `import` loads the shards into an index of that model. A re-run resumes:
    finished shards are kept, missing ones written. engine="ray" embeds on a Ray cluster.
    precision "mixed" computes in float16/bfloat16 (recorded in the shards; vectors are float32).
    """
    ray_engine.check_engine(engine)
    roots = [absolute(p) for p in paths]
    for r in roots:  # said before the model loads
        if not os.path.lexists(r):
            raise InputNotFoundError(f"No such file or folder: {r}")
    check_precision(precision)
    out = Path(out).expanduser()
    name, wspec = requested_model(out, None, backbone, weights, seed, None)  # what a new index would take
    asked = {
        "backbone": name,
        "weights_kind": wspec.kind,
        "weights_seed": wspec.seed,
        "weights_path": wspec.path,
        "precision": precision,
    }
    # The backbone is built by the first meta() (a re-run whose shards are all done builds none),
    # for Ray too: the shards record its fingerprint, and workers check theirs.
    job = IndexModel(
        out,
        None,
        requested=(name, wspec),
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        engine=engine,
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
    )
    return embed_job.write_shards(
        roots, out, job.meta, functools.partial(job.embedder, ordered=True), asked=asked, shard_size=shard_size, progress=progress
    )
