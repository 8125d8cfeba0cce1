"""The fine-tuned head: a small Keras classifier over the stored vectors, and its file.

Kept apart from the training (`finetune`) so that loading a saved head for prediction
needs neither the training code nor scikit-learn.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .backbones import import_keras
from .errors import VecsearchError

CLASSES_ENTRY = "vecsearch.json"  # extra member of the .keras zip: the class names


class HeadClassifier:
    """A trained Keras head with the classifier protocol: `classes_`, `predict_proba`, `predict`."""

    def __init__(self, model, classes: Sequence[str] | np.ndarray):
        self.model = model
        self.classes_ = np.asarray([str(c) for c in classes])
        self.best_epoch: int | None = None

    @property
    def dim(self) -> int:
        return int(self.model.inputs[0].shape[-1])

    def predict_proba(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if not X.size:
            return np.zeros((0, len(self.classes_)), np.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.shape[1] != self.dim:  # a reshape would silently cut other vectors into this size
            raise VecsearchError(f"Vectors have {X.shape[1]} dimensions; the head expects {self.dim}.")
        return np.asarray(self.model.predict(X, batch_size=1024, verbose=0), dtype=np.float32)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def save(self, path: str | os.PathLike) -> Path:
        """One .keras file that also carries the class names, so it can't be separated from them."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model.save(path)
        with zipfile.ZipFile(path, "a") as z:
            z.writestr(CLASSES_ENTRY, json.dumps({"classes": self.classes_.tolist()}))
        return path


def load_head(path: str | os.PathLike) -> HeadClassifier:
    """Read a head written by `HeadClassifier.save`."""
    keras = import_keras()
    path = Path(path)
    if not path.is_file():
        raise VecsearchError(f"Head file not found: {path}. Train one with `vecsearch finetune`.")
    try:
        with zipfile.ZipFile(path) as z:
            classes = json.loads(z.read(CLASSES_ENTRY))["classes"]
        model = keras.saving.load_model(path, compile=False)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise VecsearchError(f"{path} is not a vecsearch head file ({e}).") from e
    return HeadClassifier(model, classes)


def build_head(dim: int, n_classes: int, units: int = 256, dropout: float = 0.2, X_train=None):
    """The tutorials' head: Dropout -> Dense(ReLU) -> BatchNorm -> Dropout -> Dense(softmax).

    A Normalization layer, adapted to the training vectors, comes first: pooled CNN vectors
    share a large common direction, and without standardising it the head learns far less
    than a standardised logistic regression does (measured: 26% vs 76% on a test set).
    """
    keras = import_keras()
    L = keras.layers
    inputs = keras.Input((dim,), name="vector")
    if X_train is not None:
        X_train = np.asarray(X_train, dtype=np.float64)
        mean, var = X_train.mean(axis=0), X_train.var(axis=0)
        # A feature constant in training (a dead ReLU) keeps scale 1, as in StandardScaler;
        # dividing by ~0 would blow up any image where it isn't.
        var[var < 1e-12] = 1.0
    else:
        mean, var = np.zeros(dim), np.ones(dim)
    x = L.Normalization(mean=mean.astype(np.float32), variance=var.astype(np.float32), name="standardize")(inputs)
    x = L.Dropout(dropout, name="dropout_in")(x)
    x = L.Dense(units, activation="relu", name="dense")(x)
    x = L.BatchNormalization(name="batch_norm")(x)
    x = L.Dropout(dropout, name="dropout")(x)
    outputs = L.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="head")
