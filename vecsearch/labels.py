"""ImageNet top-k labels from the backbone's own classifier, applied to the stored vectors.

The ImageNet top of ResNet50, Xception and InceptionV3 is one softmax Dense layer over
the global-average-pooled features (MobileNet's is a 1x1 convolution over the same pool,
the same linear map), and the index stores those features (unit vector * norm). So
labels are `softmax(raw @ W + b)` in NumPy: no second pass of the network over the
images. W and b come from the with-top Keras model of the index's weights, and only
after its convolutional part is checked against the fingerprint the index recorded,
so labels never come from a different model. They are cached in `imagenet_top.npz`.

`imagenet_class_index.json` is Keras's class index (1000 ImageNet wnids and names, the
file `keras.applications.imagenet_utils.decode_predictions` downloads; Apache-2.0, from
the Keras project, https://github.com/keras-team/keras). The bundled copy is
byte-identical to it (md5 c2c37ea517e94d9795004a39431a14cb, the hash Keras checks), so
nothing is downloaded at run time.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import files
from .backbones import (
    BackboneSpec,
    WeightsSpec,
    build_seeded_or_imagenet,
    get_spec,
    import_keras,
    model_loading,
    pooled_submodel,
    short_error,
    weights_fingerprint,
    with_top_file,
)
from .errors import (
    IndexMismatchError,
    InputNotFoundError,
    NotIndexedError,
    UnknownClassError,
    VecsearchError,
    WeightsUnavailableError,
)
from .files import atomic_write
from .store import Store

log = logging.getLogger(__name__)

NUM_CLASSES = 1000
DEFAULT_TOP = 5
TOP_CACHE = "imagenet_top.npz"
_BATCH = 1024


# -- the class index -------------------------------------------------------------------
@dataclass(frozen=True)
class ImagenetClass:
    index: int
    wnid: str
    name: str


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImagenetClass, ...]:
    """The 1000 classes in output order, from the bundled Keras class index."""
    text = resources.files("vecsearch").joinpath("imagenet_class_index.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    classes = tuple(ImagenetClass(i, *raw[str(i)]) for i in range(len(raw)))
    if len(classes) != NUM_CLASSES:  # pragma: no cover - a broken install
        raise VecsearchError(f"The bundled ImageNet class index has {len(classes)} classes, expected {NUM_CLASSES}.")
    return classes


def _norm(s: str) -> str:
    return s.strip().lower().replace(" ", "_")


def find_classes(query: str) -> list[ImagenetClass]:
    """Classes matching a wnid or a name (case-insensitive, spaces = underscores).

    A list because ImageNet reuses two names ("crane" the bird and the machine,
    "maillot" twice). Unknown -> UnknownClassError naming the closest names.
    """
    q = _norm(query)
    if not q:
        raise UnknownClassError("Give an ImageNet class name or WordNet id, e.g. golden_retriever or n02099601.")
    found = [c for c in imagenet_classes() if c.wnid.lower() == q or c.name.lower() == q]
    if found:
        return found
    names = sorted({c.name for c in imagenet_classes()})
    by_lower = {n.lower(): n for n in names}
    # Names holding the query or a word close to it ("retrievr" -> golden_retriever, ...),
    # then names close as a whole.
    words = {w for n in by_lower for w in n.split("_") if len(w) > 2}
    near = set(difflib.get_close_matches(q, words, n=3, cutoff=0.75))
    close = [n for n in by_lower if q in n or near & set(n.split("_"))]
    close += [n for n in difflib.get_close_matches(q, list(by_lower), n=5, cutoff=0.6) if n not in close]
    close = close[:8]
    hint = f" Close matches: {', '.join(by_lower[n] for n in close)}." if close else ""
    raise UnknownClassError(f"{query!r} is not an ImageNet class name or WordNet id.{hint}")


# -- the top's weights -----------------------------------------------------------------
@dataclass
class ImagenetTop:
    """The linear ImageNet classifier over pooled features: probs = softmax(raw @ W + b)."""

    W: np.ndarray  # float32 (dim, 1000)
    b: np.ndarray  # float32 (1000,)
    fingerprint: str  # of the convolutional part it sits on
    source: str = ""

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Softmax over the 1000 classes (float64, so rows sum to 1 to ~1e-12)."""
        logits = np.asarray(raw, np.float64) @ self.W.astype(np.float64) + self.b.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def top_of(full_model, dim: int, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a with-top model whose top is one linear map of the global average pool.

    Accepts Dense, or a 1x1 Conv2D (MobileNet), with only Dropout/Reshape/Flatten and a
    softmax in between; anything else (VGG16's fc1/fc2) can't be applied to stored vectors.
    """
    keras = import_keras()
    layers = full_model.layers
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    unsupported = VecsearchError(
        f"ImageNet labels need a backbone whose ImageNet top is one dense layer over its pooled "
        f"features (resnet50, xception, inception_v3, mobilenet); {name or 'this backbone'}'s top is not."
    )
    if not pools:
        raise unsupported
    after = layers[pools[-1] + 1 :]
    linear, softmax = [], False
    for layer in after:
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            linear.append(layer)
            softmax = getattr(layer.activation, "__name__", "") == "softmax"
        elif isinstance(layer, keras.layers.Activation) and getattr(layer.activation, "__name__", "") == "softmax":
            softmax = True
        elif not isinstance(layer, (keras.layers.Dropout, keras.layers.Reshape, keras.layers.Flatten)):
            raise unsupported
    if len(linear) != 1 or not softmax:
        raise unsupported
    kernel = np.asarray(linear[0].kernel.numpy(), np.float32)
    if kernel.ndim == 4 and kernel.shape[:2] != (1, 1):
        raise unsupported
    W = kernel.reshape(-1, kernel.shape[-1])
    b = np.asarray(linear[0].bias.numpy(), np.float32) if linear[0].bias is not None else np.zeros(W.shape[1], np.float32)
    if W.shape != (dim, NUM_CLASSES):
        raise VecsearchError(
            f"The top of {name or 'this model'} maps {W.shape[0]} features to {W.shape[1]} classes; "
            f"ImageNet labels need {dim} -> {NUM_CLASSES}."
        )
    return W, b


def _full_model(spec: BackboneSpec, weights: WeightsSpec):
    """The with-top Keras model for these weights, or a message saying which file to use."""
    top_file = with_top_file(spec)
    if weights.kind in ("random", "imagenet"):
        return build_seeded_or_imagenet(spec, weights, include_top=True)
    try:
        with warnings.catch_warnings():  # Keras warns about every layer a no-top file lacks
            warnings.simplefilter("ignore")
            return spec.build(weights.path, True)
    except Exception as e:
        log.debug("loading %s with the top failed", weights.path, exc_info=True)
        raise WeightsUnavailableError(
            f"Could not load an ImageNet top from {weights.path}: it looks like a no-top weights file, which has "
            f"no classifier to label with. Labels need the with-top file of the same weights, e.g. {top_file} "
            f"(or weights saved from keras.applications.{_keras_class(spec)}(include_top=True)); give that file "
            f"as the weights to label with. (Keras said: {short_error(e)})",
            option="weights",
        ) from e


def _keras_class(spec: BackboneSpec) -> str:
    return {
        "resnet50": "ResNet50",
        "xception": "Xception",
        "inception_v3": "InceptionV3",
        "mobilenet": "MobileNet",
        "vgg16": "VGG16",
    }.get(spec.name, spec.name)


def load_top(store: Store, directory: Path, weights: Any = None) -> ImagenetTop:
    """The index's ImageNet top: from the cache, else from the with-top model (then cached).

    `weights` (a WeightsSpec, "imagenet" or a file) overrides where the top comes from,
    e.g. the with-top file for an index built from the no-top one; its convolutional
    weights must still be the index's, or IndexMismatchError.
    """
    info = store.require_info()
    cache = Path(directory) / TOP_CACHE
    if weights is None and cache.exists():
        try:
            with np.load(cache) as z:
                if str(z["fingerprint"]) == info.weights_fingerprint:
                    return ImagenetTop(z["W"], z["b"], str(z["fingerprint"]), str(z["source"]))
                log.info("ImageNet top cache is for other weights; rebuilding")
        except Exception as e:  # a torn or foreign file: rebuild it
            log.warning("ignoring unreadable %s: %s", cache, e)
    spec = get_spec(info.backbone)
    if weights is None:
        ws = WeightsSpec.recorded(info)
    elif isinstance(weights, WeightsSpec):
        ws = weights
    else:
        ws = WeightsSpec.parse(weights)
    t0 = time.perf_counter()
    with model_loading(spec.name, ws, " with its ImageNet top"):
        full = _full_model(spec, ws)
        fingerprint = weights_fingerprint(pooled_submodel(full))
    if fingerprint != info.weights_fingerprint:
        raise IndexMismatchError(
            f"The with-top model from {ws.describe()} does not have the convolutional weights that built the "
            f"index at {directory} ({WeightsSpec.recorded(info).describe()}), "
            "so its labels would belong to another model. Use the with-top file of the same weights."
        )
    W, b = top_of(full, info.dim, spec.name)
    top = ImagenetTop(W, b, fingerprint, ws.describe())

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a bare temp name
            np.savez(f, W=W, b=b, fingerprint=np.array(fingerprint), source=np.array(top.source))

    atomic_write(cache, write)  # a unique temp file: two `label` runs at once cannot collide
    log.debug("ImageNet top of %s ready in %.1fs", spec.name, time.perf_counter() - t0)
    return top


# -- labelling and reading labels ---------------------------------------------------------
@dataclass
class Label:
    rank: int
    wnid: str
    name: str
    prob: float


@dataclass
class ImageLabels:
    id: int
    path: str
    labels: list[Label] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LabelSummary:
    labelled: int
    top: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def decode(probs: np.ndarray, top: int = DEFAULT_TOP) -> list[list[tuple[int, str, str, float]]]:
    """Per row, the `top` most probable (class_index, wnid, name, prob), best first.

    The order of `keras.applications.imagenet_utils.decode_predictions`, with the index.
    """
    classes = imagenet_classes()
    probs = np.asarray(probs)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [
        [(int(c), classes[c].wnid, classes[c].name, float(row[c])) for c in idx] for row, idx in zip(probs, order, strict=False)
    ]


def label_images(
    store: Store,
    directory: Path,
    *,
    top: int = DEFAULT_TOP,
    ids: Iterable[int] | None = None,
    only_missing: bool = False,
    weights: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> LabelSummary:
    """Store the top-`top` ImageNet classes of the indexed images (`ids`, default all; or the unlabelled ones).

    Labels of an image are replaced as a whole, so `--top` can grow or shrink them.
    """
    if top < 1 or top > NUM_CLASSES:
        raise VecsearchError(f"top must be between 1 and {NUM_CLASSES}, got {top}.")
    started = time.perf_counter()
    info = store.require_info()
    all_ids = store.vector_ids()
    ids = all_ids if ids is None else np.intersect1d(all_ids, np.fromiter(ids, np.int64))
    if only_missing:
        ids = np.setdiff1d(ids, store.imagenet_labelled_ids())
    total = len(ids)
    if progress:
        progress(0, total)
    if not total:
        return LabelSummary(0, top, round(time.perf_counter() - started, 3))
    head = load_top(store, directory, weights)
    done = 0
    for i in range(0, total, _BATCH):
        chunk_ids, vecs, norms = store.vectors(ids[i : i + _BATCH], dim=info.dim)
        known = np.isfinite(norms)  # vectors imported without their length cannot be labelled
        chunk_ids, vecs, norms = chunk_ids[known], vecs[known], norms[known]
        probs = head.probabilities(vecs.astype(np.float64) * norms[:, None])
        rows = [
            (int(image_id), rank + 1, c, wnid, name, p)
            for image_id, best in zip(chunk_ids, decode(probs, top), strict=False)
            for rank, (c, wnid, name, p) in enumerate(best)
        ]
        store.set_imagenet_labels(chunk_ids, rows)
        done += len(chunk_ids)
        if progress:
            progress(done, total)
    return LabelSummary(done, top, round(time.perf_counter() - started, 3))


def probabilities(
    store: Store, directory: Path, ids: Iterable[int] | None = None, weights: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, probs over the 1000 classes) of indexed images, ordered by id; nothing is stored."""
    info = store.require_info()
    head = load_top(store, directory, weights)
    out_ids, vecs, norms = store.vectors(ids, dim=info.dim)
    return out_ids, head.probabilities(vecs.astype(np.float64) * norms[:, None])


def ids_for_paths(store: Store, paths: Iterable[str | os.PathLike]) -> list[int]:
    """Indexed image ids for files (exact) and folders (everything under them)."""
    records = store.records()
    out: list[int] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise InputNotFoundError(f"No such file or folder: {path}")
        given = files.absolute(path)
        if given.is_dir():
            prefix = str(given).rstrip(os.sep) + os.sep
            found = [r.id for k, r in records.items() if k.startswith(prefix)]
        else:
            rec = records.get(str(given))
            found = [rec.id] if rec is not None else []
        if not found:
            raise NotIndexedError(f"{path} is not in the index; run `vecsearch index {path}` first.")
        out.extend(found)
    return sorted(set(out))


def image_labels(
    store: Store, paths: Iterable[str | os.PathLike] | None = None, *, ids: Iterable[int] | None = None
) -> list[ImageLabels]:
    """Stored labels of the given indexed files/folders or ids (all labelled images when neither), by path."""
    if paths is not None:
        ids = ids_for_paths(store, paths)
    stored = store.imagenet_labels(ids)
    recs = store.images(stored)
    out = [
        ImageLabels(i, recs[i].path, [Label(r, w, n, p) for r, _c, w, n, p in rows]) for i, rows in stored.items() if i in recs
    ]
    return sorted(out, key=lambda x: x.path)


@dataclass
class LabelHit:
    """One image of a class listing: `rank` is its place in the listing (1..n), `class_rank`
    the class's place in that image's own stored top-k (1: its most probable class)."""

    id: int
    path: str
    rank: int
    class_rank: int
    wnid: str
    name: str
    prob: float

    def to_dict(self) -> dict:
        return asdict(self)


def images_with_label(store: Store, query: str, limit: int | None = None) -> list[LabelHit]:
    """Images whose stored top-k holds the class (wnid or name), most probable first."""
    classes = find_classes(query)
    if not store.imagenet_labelled_ids().size:
        raise VecsearchError(f"The index at {store.path.parent} has no ImageNet labels yet; run `vecsearch label` first.")
    rows = store.images_with_imagenet_class([c.index for c in classes])
    recs = store.images(r[0] for r in rows)
    best: dict[int, LabelHit] = {}  # a shared name ("crane") can match twice in one image
    for i, class_rank, wnid, name, prob in rows:
        if i in recs and (i not in best or prob > best[i].prob):
            best[i] = LabelHit(i, recs[i].path, 0, class_rank, wnid, name, prob)
    hits = sorted(best.values(), key=lambda h: (-h.prob, h.path))
    hits = hits[:limit] if limit else hits
    for place, h in enumerate(hits, 1):
        h.rank = place
    return hits
