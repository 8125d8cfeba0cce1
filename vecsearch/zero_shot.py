"""Zero-shot classes: every image predicted from class names alone, with a CLIP or SigLIP backbone.

Each label becomes a prompt ("a photo of a {label}"), the text tower embeds it into the image
vectors' space, and each image takes the label of its most similar prompt (cosine). No image
is taught; where images do carry taught labels of the same classes, the predictions are scored
against them, so the probe and k-NN can be compared with this on the same images.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np

from .classes import labelled_vectors
from .classify import TrainResult
from .errors import VecsearchError
from .store import Store

DEFAULT_PROMPT = "a photo of a {label}"
LOGIT_SCALE = 100.0
"""Cosines times this, softmaxed over the labels, are the confidences: CLIP's trained logit scale (100)."""


def parse_labels(labels: str | Iterable[str]) -> list[str]:
    """Class names from "cat,dog,car" or a list: stripped, non-empty, each once, at least two."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    out: list[str] = []
    for item in items:
        name = str(item).strip()
        if name and name not in out:
            out.append(name)
    if len(out) < 2:
        raise VecsearchError("Zero-shot needs at least two class names, e.g. cat,dog,car.", option="zero_shot")
    return out


def prompts(labels: list[str], prompt: str = DEFAULT_PROMPT) -> list[str]:
    """The prompt for each label; the template must hold `{label}` once."""
    if prompt.count("{label}") != 1:
        raise VecsearchError(f"The prompt {prompt!r} must hold {{label}} once, e.g. {DEFAULT_PROMPT!r}.", option="prompt")
    return [prompt.replace("{label}", label) for label in labels]


def scores(vectors: np.ndarray, text_vectors: np.ndarray) -> np.ndarray:
    """Cosine of each image (rows) with each label's prompt (columns): both are unit vectors."""
    return np.asarray(vectors, np.float32) @ np.asarray(text_vectors, np.float32).T


def confidences(cosines: np.ndarray) -> np.ndarray:
    z = cosines * LOGIT_SCALE
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def classify(
    store: Store, embed_text: Callable[[list[str]], np.ndarray], labels: str | Iterable[str], prompt: str = DEFAULT_PROMPT
) -> TrainResult:
    """Predict every embedded image as one of `labels`; scored on the taught labels among them."""
    started = time.perf_counter()
    names = parse_labels(labels)
    texts = prompts(names, prompt)
    text_vectors = embed_text(texts)
    info = store.require_info()
    ids, X, _ = store.vectors(dim=info.dim)  # every embedded image (none: empty arrays all through)
    cos = scores(X, text_vectors)
    best = cos.argmax(axis=1)
    conf = confidences(cos)
    recs = store.images(int(i) for i in ids)
    predictions = [
        {
            "id": int(i),
            "path": recs[int(i)].path,
            "label": names[int(b)],
            "confidence": round(float(conf[row, b]), 6),
            "score": round(float(cos[row, b]), 6),
        }
        for row, (i, b) in enumerate(zip(ids, best, strict=True))
        if int(i) in recs
    ]
    metrics = _against_taught(store, names, {int(i): names[int(b)] for i, b in zip(ids, best, strict=True)})
    params = {"labels": names, "prompt": prompt, "prompts": texts, "backbone": info.backbone, "logit_scale": LOGIT_SCALE}
    return TrainResult("zero-shot", "zero-shot", params, None, metrics, predictions, round(time.perf_counter() - started, 3))


def _against_taught(store: Store, names: list[str], predicted: dict[int, str]) -> dict:
    """Accuracy, report and confusion on the images taught one of `names` (empty without any)."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    ls = labelled_vectors(store)
    pairs = [(str(y), predicted[int(i)]) for i, y in zip(ls.ids, ls.y, strict=True) if str(y) in names and int(i) in predicted]
    if not pairs:
        return {}
    y_true = [t for t, _ in pairs]
    y_pred = [p for _, p in pairs]
    classes = sorted(set(names))
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 6),
        "method": "taught labels",
        "n_test": len(pairs),
        "classes": classes,
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "report": classification_report(y_true, y_pred, labels=classes, output_dict=True, zero_division=0),
    }
