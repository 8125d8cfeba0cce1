"""Heatmaps of what the model looks at: for a class, and for "why are these two similar".

Every score vecsearch computes from an image is a function of the backbone's last feature
map A (h x w positions x c channels, the layer `BackboneSpec.last_conv_layer` names),
through its global average pool p = mean over positions of A[i, j, :]. For the ImageNet
top (logit = p . W[:, c] + b[c]), the linear probe (a decision value linear in the unit
vector p / |p|) and the cosine similarity to another image (p / |p| . q), the score's
feature part is a dot product with that mean, so it splits exactly over positions:

    map[i, j] = A[i, j, :] . v / (h * w),  summing to the feature part p . v

(CAM, Zhou et al. 2016; Grad-CAM's channel weights for such a top are v / (h * w), so it
reduces to this). No gradients are taken, so it runs on every Keras backend. The
fine-tuned head is not linear: its map is Grad-CAM proper (Selvaraju et al. 2017), the
gradient of the class logit with respect to A averaged over positions, weighting A's
channels; the gradient comes from the backend in use (TensorFlow's GradientTape, JAX's
grad, torch autograd).

The map covers the whole image as the model saw it (the same resize as indexing, no
crop) and is stretched back to the original's aspect ratio for the overlay: the jet
colour map of the positive part, blended over the image as in the Keras Grad-CAM example.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from . import images
from .backbones import Backbone, import_keras
from .config import MAX_IMAGE_PIXELS
from .errors import BadImageError, VecsearchError
from .extract import RESAMPLE
from .labels import ImagenetTop, find_classes, imagenet_classes

log = logging.getLogger(__name__)

OVERLAY_SIDE = 512
"""Longest side of an overlay PNG unless told otherwise (the image is shrunk or enlarged to it)."""
ALPHA = 0.4
"""Opacity of the colour map over the image (the Keras Grad-CAM example's 0.4)."""

__all__ = ["Explanation", "FeatureMaps", "Seen", "OVERLAY_SIDE"]


# -- the feature map ----------------------------------------------------------------------
def check_explainable(spec) -> None:
    """Refuse, before any work, a backbone whose vector no feature map adds up to."""
    if spec.explainable:
        return
    why = (
        "it is a vision transformer: its vector comes from tokens, not the mean of a feature map"
        if spec.hub
        else "its vector is not the mean of one feature map (it is normalised after the pool)"
    )
    raise VecsearchError(
        f"Explanations are not available for backbone {spec.name}: {why}, so no map adds up to a score. "
        "Use a CNN such as resnet50 or efficientnetv2-b0 for explanations."
    )


class FeatureMaps:
    """The backbone with two outputs: the last feature map and the pooled vector it makes."""

    def __init__(self, backbone: Backbone):
        keras = import_keras()
        model = backbone.model
        self.backbone = backbone
        name = backbone.spec.last_conv_layer
        check_explainable(backbone.spec)
        if name:
            try:
                tensor = model.get_layer(name).output
            except ValueError:
                raise VecsearchError(
                    f"Backbone {backbone.name} has no layer {name!r} (its BackboneSpec.last_conv_layer); "
                    "name the layer its global average pool reads."
                ) from None
        else:
            # The last pool: EfficientNet's and MobileNetV3's squeeze-and-excite blocks pool too, earlier.
            pool = next(
                (layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.GlobalAveragePooling2D)), None
            )
            feeding = [layer for layer in model.layers if pool is not None and layer is not pool and layer.output is pool.input]
            if not feeding:
                raise VecsearchError(
                    f"Backbone {backbone.name} has no global average pool fed by one layer; "
                    "set BackboneSpec.last_conv_layer to get explanations."
                )
            name, tensor = feeding[0].name, feeding[0].output
        if len(tensor.shape) != 4 or tensor.shape[-1] != backbone.dim:
            raise VecsearchError(
                f"Layer {name!r} of {backbone.name} outputs {tuple(tensor.shape)}; an explanation needs "
                f"the (height, width, {backbone.dim}) feature map the global average pool reads."
            )
        self.layer = name
        self.model = keras.Model(_single(model.inputs), [tensor, model.outputs[0]])

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(feature maps (n, h, w, c) float32, pooled (n, c) float64 = their mean) of RGB pixels (n, H, W, 3)."""
        x = self.backbone.spec.preprocess(np.asarray(pixels, dtype=np.float32))
        fmap, pooled_out = self.model.predict_on_batch(x)
        fmap = np.asarray(fmap, np.float32)
        pooled = fmap.astype(np.float64).mean(axis=(1, 2))
        # The decomposition is exact only for the layer the pool reads: check it is that one.
        pooled_out = np.asarray(pooled_out, np.float64).reshape(pooled.shape)
        # Mixed precision pools in float16/bfloat16 (8-11 bit mantissas): a looser match.
        rtol = 1e-3 if self.backbone.precision == "float32" else 3e-2
        if not np.allclose(pooled, pooled_out, rtol=rtol, atol=rtol * 1e-2 * (np.abs(pooled_out).max() + 1e-12)):
            raise VecsearchError(
                f"The mean of layer {self.layer!r} is not the pooled vector of {self.backbone.name}: "
                "BackboneSpec.last_conv_layer must name the layer its global average pool reads."
            )
        return fmap, pooled


def _single(inputs):
    """A model's one input as a tensor, not a list: a list-input model warns when called with a bare array."""
    return inputs[0] if len(inputs) == 1 else inputs


@dataclass
class Seen:
    """One image as the model saw it: its feature map, pooled vector, and the pixels to draw on."""

    fmap: np.ndarray  # (h, w, c) float32
    pooled: np.ndarray  # (c,) float64, the mean of fmap
    display: np.ndarray = field(repr=False)  # (H, W, 3) uint8 at the original aspect ratio
    path: str | None = None

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.pooled))

    @property
    def unit(self) -> np.ndarray:
        """The image's unit vector, as indexing computes it (float64)."""
        n = self.norm
        return self.pooled / n if n > 0 else self.pooled


def look(
    maps: FeatureMaps,
    data: bytes,
    *,
    path: str | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    side: int = OVERLAY_SIDE,
    lock=contextlib.nullcontext(),
    pixels: np.ndarray | None = None,
) -> Seen:
    """Decode image bytes exactly as indexing does, run the feature-map model, and keep pixels to draw on.

    The bytes are decoded twice, at the model's input size and at the overlay's (each
    with JPEG draft scaling), rather than once at full size; only the model call holds `lock`.
    `pixels` passes the first decode when the caller made it already (before the model loaded).
    """
    try:
        if pixels is None:
            pixels, _, _ = images.decode_image(data, maps.backbone.input_size, max_pixels=max_pixels, resample=RESAMPLE)
        display = display_pixels(data, side, max_pixels)
    except BadImageError as e:
        raise BadImageError(e.reason, path=path) from e
    with lock:
        fmap, pooled = maps(pixels[None])
    return Seen(fmap[0], pooled[0], display, path)


def display_pixels(data: bytes, side: int, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The image (oriented, RGB) with its longest side `side`: shrunk on decode, enlarged if small."""
    if side < 16:
        raise VecsearchError(f"An overlay needs a side of at least 16 pixels, got {side}.")
    pixels, _, _ = images.decode_image(data, (side, side), max_pixels=max_pixels, keep_aspect=True)
    h, w = pixels.shape[:2]
    if max(h, w) < side:
        scale = side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
    return pixels


# -- the explanation ----------------------------------------------------------------------
@dataclass
class Explanation:
    """A heatmap over one image and the score it explains.

    `map` is signed, over the feature map's positions (as the model saw the image). For
    CAM (`method` "cam": ImageNet classes, the probe, similarity) it sums to
    `feature_score` = `score` - `bias`; Grad-CAM's (the head) is a linearisation that sums
    to nothing in particular, and its `bias` is None.
    """

    target: str  # "imagenet" | "classifier" | "similar"
    method: str  # "cam" | "grad-cam"
    label: str  # the ImageNet class name, the classifier's label, or "similarity"
    score: float  # the ImageNet logit, the probe's decision value or the head's logit, or the cosine similarity
    bias: float | None
    map: np.ndarray  # (h, w) float64
    layer: str
    display: np.ndarray = field(repr=False)
    path: str | None = None
    wnid: str | None = None  # ImageNet classes only
    probability: float | None = None  # of the class (None for similarity)
    classifier: str | None = None
    like: str | None = None  # for similarity: the other image (its path, or #id, or "upload")

    @property
    def feature_score(self) -> float | None:
        """The part of the score the positions hold (the map's sum); None for Grad-CAM."""
        return None if self.bias is None else self.score - self.bias

    def to_dict(self, *, with_map: bool = True) -> dict:
        d = {
            "path": self.path,
            "target": self.target,
            "method": self.method,
            "label": self.label,
            "wnid": self.wnid,
            "classifier": self.classifier,
            "like": self.like,
            "score": float(self.score),
            "bias": None if self.bias is None else float(self.bias),
            "feature_score": None if self.feature_score is None else float(self.feature_score),
            "probability": None if self.probability is None else float(self.probability),
            "layer": self.layer,
            "shape": list(self.map.shape),
            "map_sum": float(self.map.sum()),
        }
        if with_map:
            d["map"] = [[float(v) for v in row] for row in self.map]
        return d

    def heat(self) -> np.ndarray:
        """The map as shown: its positive part over its maximum, in 0..1 (the Keras example's ReLU and scaling)."""
        return normalised(self.map)

    def overlay(self) -> Image.Image:
        """The heatmap over the image, at the image's aspect ratio."""
        return overlay(self.display, self.map)

    def to_png(self) -> bytes:
        return png_bytes(self.overlay())

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_png())
        return path


def cam(fmap: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Each position's share of p . v, where p is the mean of fmap over positions: sums to p . v."""
    h, w, _ = fmap.shape
    return (fmap.astype(np.float64) @ np.asarray(v, np.float64)) / (h * w)


def explain_imagenet(seen: Seen, top: ImagenetTop, layer: str, class_query: str | None = None) -> Explanation:
    """The map of one ImageNet class (default: the image's top-1) for the index's ImageNet top."""
    probs = top.probabilities(seen.pooled[None])[0]
    if class_query:
        c = max((m.index for m in find_classes(class_query)), key=lambda i: probs[i])  # "crane" is two classes
    else:
        c = int(np.argmax(probs))
    v = top.W[:, c].astype(np.float64)
    bias = float(top.b[c])
    cls = imagenet_classes()[c]
    return Explanation(
        "imagenet",
        "cam",
        cls.name,
        float(seen.pooled @ v) + bias,
        bias,
        cam(seen.fmap, v),
        layer,
        seen.display,
        seen.path,
        wnid=cls.wnid,
        probability=float(probs[c]),
    )


def explain_similar(seen: Seen, other: np.ndarray, layer: str, like: str | None = None) -> Explanation:
    """Why the image is similar to another one (its unit vector): the cosine similarity, position by position."""
    q = np.asarray(other, np.float64).reshape(-1)
    qn = np.linalg.norm(q)
    if q.shape != seen.pooled.shape or not qn:
        raise VecsearchError(f"The other image's vector has {q.size} dimensions (or is zero); this one has {seen.pooled.size}.")
    q = q / qn
    n = seen.norm or 1.0
    return Explanation(
        "similar",
        "cam",
        "similarity",
        float(seen.unit @ q),
        0.0,
        cam(seen.fmap, q / n),
        layer,
        seen.display,
        seen.path,
        like=like,
    )


def linear_weights(clf, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W (dim, n_scores), b (n_scores,), classes) with decision_function(x) = x @ W + b, for the probe.

    Composes the affine steps of the pipeline (StandardScaler, RowSpan, then a linear
    model's coef_ and intercept_); anything else is not linear in the unit vector.
    """
    from .classify import RowSpan

    steps = [s for _, s in clf.steps] if hasattr(clf, "steps") else [clf]
    W, b = np.eye(dim), np.zeros(dim)
    for step in steps:
        kind = type(step).__name__
        if kind == "StandardScaler":
            mean = step.mean_ if getattr(step, "with_mean", True) and step.mean_ is not None else np.zeros(W.shape[1])
            scale = step.scale_ if getattr(step, "with_std", True) and step.scale_ is not None else np.ones(W.shape[1])
            W, b = W / scale, (b - mean) / scale
        elif isinstance(step, RowSpan):
            if step.basis_ is not None:
                W, b = W @ step.basis_, b @ step.basis_
        elif hasattr(step, "coef_") and hasattr(step, "intercept_") and step is steps[-1]:
            coef = np.atleast_2d(np.asarray(step.coef_, np.float64))
            W, b = W @ coef.T, b @ coef.T + np.asarray(step.intercept_, np.float64)
        else:
            raise VecsearchError(f"Cannot explain this classifier: its step {kind} is not linear in the vector.")
    return W, b, np.asarray(clf.classes_).astype(str)


def explain_probe(seen: Seen, clf, row: dict, layer: str, label: str | None = None) -> Explanation:
    """The map of one class of a linear probe: its decision value, position by position."""
    W, b, classes = linear_weights(clf, seen.pooled.size)
    x = seen.unit
    decision = x @ W + b
    # A check that the composition is the model: sklearn's own decision values on the same vector.
    expected = np.asarray(clf.decision_function(x[None]), np.float64).reshape(-1)
    if not np.allclose(decision, expected, rtol=1e-6, atol=1e-6):
        raise VecsearchError(f"Cannot explain classifier {row['name']!r}: it is not the linear probe vecsearch trains.")
    proba = np.asarray(clf.predict_proba(x[None]), np.float64)[0]
    j = _class_position(classes, label, proba, row["name"])
    if W.shape[1] == 1:  # binary: one decision value, the log-odds of classes[1]; classes[0]'s is its negative
        sign = 1.0 if j == 1 else -1.0
        v, bias = sign * W[:, 0], sign * float(b[0])
    else:
        v, bias = W[:, j], float(b[j])
    return Explanation(
        "classifier",
        "cam",
        str(classes[j]),
        float(x @ v) + bias,
        bias,
        cam(seen.fmap, v / (seen.norm or 1.0)),
        layer,
        seen.display,
        seen.path,
        probability=float(proba[j]),
        classifier=row["name"],
    )


def _class_position(classes: np.ndarray, label: str | None, proba: np.ndarray, name: str) -> int:
    if label is None:
        return int(np.argmax(proba))
    found = np.flatnonzero(classes == str(label))
    if not len(found):
        raise VecsearchError(f"Classifier {name!r} has no class {label!r}; its classes: {', '.join(classes)}.")
    return int(found[0])


# -- Grad-CAM for the head ----------------------------------------------------------------
def head_logit_function(model, class_index: int):
    """f(A) = the head's logit for one class, from a batch of one feature map A: pool, normalise, head.

    The head ends in a softmax Dense layer; Grad-CAM wants the score before the softmax,
    so the last layer's kernel and bias are applied by hand.
    """
    keras = import_keras()
    ops = keras.ops
    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense):
        raise VecsearchError("Cannot explain this head: its last layer is not a Dense layer.")
    body = keras.Model(_single(model.inputs), last.input)

    def f(fmap):
        pooled = ops.mean(fmap, axis=(1, 2))
        unit = pooled / ops.sqrt(ops.sum(pooled * pooled, axis=-1, keepdims=True))
        hidden = body(unit, training=False)
        logits = ops.matmul(hidden, last.kernel)
        if last.bias is not None:
            logits = logits + last.bias
        return logits[0, class_index]

    return f


def gradient(f, x: np.ndarray) -> tuple[float, np.ndarray]:
    """(f(x), df/dx) of a scalar Keras-ops function, with the gradient machinery of the backend in use."""
    keras = import_keras()
    backend = keras.backend.backend()
    x = np.asarray(x, np.float32)
    if backend == "tensorflow":
        import tensorflow as tf

        t = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = f(t)
        g = tape.gradient(y, t)
        return float(y.numpy()), np.asarray(g.numpy(), np.float64)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        y, g = jax.value_and_grad(f)(jnp.asarray(x))
        return float(y), np.asarray(g, np.float64)
    if backend == "torch":
        import torch

        t = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        with torch.enable_grad():
            y = f(t)
            (g,) = torch.autograd.grad(y, t)
        return float(y.detach().cpu()), g.detach().cpu().numpy().astype(np.float64)
    raise VecsearchError(
        f"Grad-CAM for the fine-tuned head needs gradients, which vecsearch takes on the TensorFlow, "
        f"JAX and PyTorch backends; this Keras runs on {backend!r}. Set KERAS_BACKEND to one of those."
    )


def explain_head(seen: Seen, head, row: dict, layer: str, label: str | None = None) -> Explanation:
    """Grad-CAM of one class of the fine-tuned head (default: its prediction)."""
    classes = np.asarray(head.classes_).astype(str)
    proba = np.asarray(head.predict_proba(seen.unit.astype(np.float32)[None]), np.float64)[0]
    j = _class_position(classes, label, proba, row["name"])
    logit, grad = gradient(head_logit_function(head.model, j), seen.fmap[None])
    weights = grad[0].mean(axis=(0, 1))  # alpha_k: the gradient averaged over positions
    heat = seen.fmap.astype(np.float64) @ weights
    return Explanation(
        "classifier",
        "grad-cam",
        str(classes[j]),
        logit,
        None,
        heat,
        layer,
        seen.display,
        seen.path,
        probability=float(proba[j]),
        classifier=row["name"],
    )


# -- drawing --------------------------------------------------------------------------------
def normalised(m: np.ndarray) -> np.ndarray:
    """The positive part over its maximum, in 0..1 (all zeros when nothing is positive)."""
    m = np.maximum(np.asarray(m, np.float64), 0.0)
    top = m.max() if m.size else 0.0
    return m / top if top > 0 else np.zeros_like(m)


def jet(x: np.ndarray) -> np.ndarray:
    """A jet-like colour map: 0 dark blue -> cyan -> yellow -> 1 dark red; (..., 3) floats in 0..1."""
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peaks at 3/4, 1/2, 1/4
    return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)


def overlay(display: np.ndarray, m: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """The map's positive part in jet colours, stretched over the whole image and blended at `alpha`."""
    h, w = display.shape[:2]
    heat = Image.fromarray(normalised(m).astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
    colours = jet(np.asarray(heat)) * 255.0
    out = (1.0 - alpha) * display.astype(np.float64) + alpha * colours
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    # Pillow's default level, not optimize=True: measured 39 ms against 483 ms for a 512 x 384
    # overlay, for a file 10% larger; the server encodes one per request.
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def side_by_side(panels: Sequence[Image.Image], captions: Sequence[str] = (), gap: int = 8) -> Image.Image:
    """Panels in a row at one height, each with its caption above it, on white."""
    from PIL import ImageDraw, ImageFont

    height = max(p.height for p in panels)
    panels = [p if p.height == height else p.resize((max(1, round(p.width * height / p.height)), height)) for p in panels]
    strip = 16 if captions else 0
    out = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), height + strip), "white")
    draw, font = ImageDraw.Draw(out), ImageFont.load_default()
    x = 0
    for i, p in enumerate(panels):
        out.paste(p, (x, strip))
        if i < len(captions):
            draw.text((x + 2, 2), captions[i], fill="black", font=font)
        x += p.width + gap
    return out


def save_pair(query: Explanation, result: Explanation, path: str | os.PathLike, captions: Sequence[str] = ()) -> Path:
    """One PNG: the query's map against a result beside the result's map against the query."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(side_by_side([query.overlay(), result.overlay()], captions)))
    return path


def describe(e: Explanation) -> str:
    """One line for people: what was explained and the score."""
    if e.target == "similar":
        return f"similarity {e.score:.4f} ({e.method}, layer {e.layer}, map {e.map.shape[0]}x{e.map.shape[1]})"
    what = f"{e.label} ({e.wnid})" if e.wnid else e.label
    by = "ImageNet" if e.target == "imagenet" else f"classifier {e.classifier}"
    prob = f", probability {e.probability:.4f}" if e.probability is not None else ""
    return f"{what} by {by}: logit {e.score:.4f}{prob} ({e.method}, layer {e.layer}, map {e.map.shape[0]}x{e.map.shape[1]})"


def kind_of(row: dict) -> str:
    """How a saved classifier is explained: 'probe' (CAM), 'head' (Grad-CAM); a k-NN can't be."""
    if row["kind"] == "knn":
        raise VecsearchError(
            f"Classifier {row['name']!r} is a k-NN: it has no weights to map. Explain why the image is "
            "similar to a neighbour instead (like another image), or train a probe.",
            option="like",
        )
    return row["kind"]


def as_target(like: Any, imagenet_class: str | None, classifier: str | None, label: str | None) -> str:
    """Which of the three targets the arguments ask for (ImageNet by default); one at most."""
    given = [t for t, v in (("similar", like), ("imagenet", imagenet_class), ("classifier", classifier)) if v is not None]
    if len(given) > 1:
        raise VecsearchError("Explain one thing at a time: a class, a classifier, or similarity to another image.")
    if label is not None and classifier is None:
        raise VecsearchError("A label to explain goes with a classifier: name the classifier too.", option="classifier")
    return given[0] if given else "imagenet"
