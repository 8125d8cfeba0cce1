"""Fine-tuning: a small Keras head on the stored vectors, optionally the backbone's last layers.

Stage 1 (always) trains the tutorials' head -- dropout, dense + ReLU, batch norm, dropout,
softmax -- on the unit vectors already in the index, so it needs no backbone pass and runs
in seconds. A stratified validation split of the training part drives early stopping; the
held-out test part (the labels' own "test" split, else 25% stratified) gives the accuracy.

Stage 2 (`unfreeze`) follows Keras's transfer-learning guide: the last N backbone layers
become trainable, BatchNormalization stays frozen in inference mode, the head sits on top,
and the whole model trains on the image files with light augmentation and a low learning
rate. The tuned weights are saved as a file; because they compute different vectors, they
can only serve a new index (`reembed`), never the one that was built with the old weights.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypedDict

import numpy as np

from . import classifiers
from .backbones import WeightsSpec, check_fingerprint, import_keras, keras_seeded, load_backbone, weights_fingerprint
from .classes import check_labels, labelled_vectors, split_parts
from .errors import BadLabelsError, VecsearchError, check_keywords
from .head import HeadClassifier, build_head, load_head
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_NAME = "head"
TUNED_DIR = "tuned"
UNFREEZE_EPOCHS = 3
UNFREEZE_LEARNING_RATE = 1e-5
"""Low, as Keras's transfer-learning guide advises: the unfrozen layers only adjust."""


class UnfreezeOptions(TypedDict, total=False):
    """How `unfreeze` trains (defaults: UNFREEZE_EPOCHS, UNFREEZE_LEARNING_RATE, batch 16, seed 0)."""

    epochs: int
    learning_rate: float
    batch_size: int
    seed: int
    on_epoch: Callable[[int, dict], None] | None


def check_unfreeze_options(options: Mapping[str, Any]) -> None:
    check_keywords("unfreeze", options, ("epochs", "learning_rate", "batch_size", "seed", "on_epoch"))


@dataclass
class HeadParams:
    """Hyper-parameters of the head and its training; stored with the classifier."""

    units: int = 256
    dropout: float = 0.2
    epochs: int = 200
    patience: int = 15
    batch_size: int = 32
    learning_rate: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_labels(y: np.ndarray, what: str, minimum: int) -> None:
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise BadLabelsError(f"Fine-tuning needs at least 2 classes in the {what} images; found {len(classes)}.")
    small = [f"{c} ({n})" for c, n in zip(classes, counts, strict=False) if n < minimum]
    if small:
        raise BadLabelsError(
            f"Every class needs at least {minimum} {what} images for a stratified validation split; "
            f"too few: {', '.join(small)}. Label more images or merge these classes."
        )


def train_head(
    X, y, params: HeadParams | None = None, *, on_epoch: Callable[[int, dict], None] | None = None
) -> tuple[HeadClassifier, dict]:
    """Train a head on unit vectors X (n, dim) with string labels y; returns (head, history).

    A stratified `val_fraction` of X is held out for early stopping (best weights kept).
    """
    from sklearn.model_selection import train_test_split

    keras = import_keras()
    p = params or HeadParams()
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray([str(v) for v in y])
    _check_labels(y, "training", 2)
    classes = np.unique(y)
    y_idx = np.searchsorted(classes, y)
    n_val = max(len(classes), int(round(p.val_fraction * len(y))))
    if n_val >= len(y) - len(classes):
        raise BadLabelsError(f"Too few training images ({len(y)}) for {len(classes)} classes and a validation split.")
    X_tr, X_val, y_tr, y_val = train_test_split(X, y_idx, test_size=n_val, stratify=y_idx, random_state=p.seed)
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=1e-3, patience=p.patience, restore_best_weights=True)
    callbacks = [stopper]
    if on_epoch:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e + 1, dict(logs or {}))))
    with keras_seeded(p.seed):  # the same labels and seed train the same head
        model = build_head(X.shape[1], len(classes), p.units, p.dropout, X_tr)
        model.compile(
            optimizer=keras.optimizers.Adam(p.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        fit = model.fit(
            X_tr,
            y_tr,
            validation_data=(X_val, y_val),
            epochs=p.epochs,
            batch_size=p.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    head = HeadClassifier(model, classes)
    head.best_epoch = int(stopper.best_epoch) + 1  # the weights kept (restored at the end of training)
    return head, history


def holdout(ls) -> tuple[str, np.ndarray, np.ndarray]:
    """(method, train positions, test positions) by the classifiers' own rule (`split_parts`):
    the labels' test split as-is, else a stratified 25% hold-out; where that rule falls back to
    k-fold (very few images) the head takes the first fold, one training run being enough."""
    check_labels(ls)
    method, parts = split_parts(ls)
    tr, te = parts[0]
    if len(parts) > 1:
        method = f"{method} (first fold)"
    return method, np.asarray(tr), np.asarray(te)


@dataclass
class FinetuneResult:
    name: str
    classes: list[str]
    history: dict
    metrics: dict
    params: dict
    path: str | None = None
    tuned: dict = field(default_factory=dict)  # what --unfreeze produced, if asked

    def to_dict(self) -> dict:
        return asdict(self)


def finetune(
    store: Store,
    directory: Path,
    *,
    name: str = DEFAULT_NAME,
    params: HeadParams | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    save: bool = True,
) -> FinetuneResult:
    """Train a head on the index's labelled vectors, score it on the test part, save it as `name`."""
    from sklearn.metrics import classification_report, confusion_matrix

    if save:
        classifiers.check_name(name)  # before training, not after it
    p = params or HeadParams()
    ls = labelled_vectors(store)
    method, tr, te = holdout(ls)
    y = ls.y.astype(str)
    head, history = train_head(ls.X[tr], y[tr], p, on_epoch=on_epoch)
    pred = head.predict(ls.X[te])
    classes = sorted(set(y.tolist()))
    metrics = {
        "accuracy": round(float(np.mean(pred == y[te])), 6),
        "method": method,
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
        "classes": classes,
        "confusion": confusion_matrix(y[te], pred, labels=classes).tolist(),
        "report": classification_report(y[te], pred, labels=classes, output_dict=True, zero_division=0),
        "epochs_run": len(history.get("loss", [])),
        "best_epoch": head.best_epoch,
        "best_val_accuracy": round(float(history["val_accuracy"][head.best_epoch - 1]), 6)
        if history.get("val_accuracy") and head.best_epoch
        else None,
    }
    path = None
    if save:
        path = str(classifiers.save(store, directory, name, "head", head, p.to_dict() | {"dim": head.dim}, metrics))
    return FinetuneResult(name, head.classes_.tolist(), history, metrics, p.to_dict(), path)


# -- stage 2: unfreeze the last layers of the backbone ---------------------------------


def _trainable_tail(base, n_layers: int) -> int:
    """Make the last n layers trainable except BatchNormalization; returns how many weights tensors train."""
    keras = import_keras()
    base.trainable = True
    layers = base.layers
    cut = max(0, len(layers) - n_layers)
    for i, layer in enumerate(layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
    return len(base.trainable_weights)


def _augmenter(seed: int):
    keras = import_keras()
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
        ],
        name="augment",
    )


def _load_pixels(paths: Sequence[str], size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    from . import images
    from .errors import BadImageError

    out, ok = [], []
    for i, p in enumerate(paths):
        try:
            out.append(images.read_image_file(Path(p), size, resample="bilinear").pixels)
            ok.append(i)
        except (BadImageError, OSError) as e:
            log.warning("skipping %s: %s", p, e)
    if not out:
        raise VecsearchError("None of the labelled image files could be read for fine-tuning.")
    return np.stack(out), ok


def unfreeze(
    store: Store,
    directory: Path,
    head: HeadClassifier,
    n_layers: int,
    *,
    epochs: int = UNFREEZE_EPOCHS,
    learning_rate: float = UNFREEZE_LEARNING_RATE,
    batch_size: int = 16,
    seed: int = 0,
    name: str = DEFAULT_NAME,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> dict:
    """Fine-tune the backbone's last `n_layers` with `head` on top, end to end on the image files.

    Saves `<index>/tuned/<name>.weights.h5` (the pooled backbone, loadable as --weights FILE)
    and `<index>/tuned/<name>.keras` (the head after tuning). Returns what it did.
    """
    keras = import_keras()
    if n_layers < 1:
        raise VecsearchError(f"Unfreezing needs a number of layers >= 1, got {n_layers}.")
    info = store.require_info()
    ls = labelled_vectors(store)
    y = ls.y.astype(str)
    _, tr, te = holdout(ls)
    known = np.isin(y, head.classes_)
    tr, te = tr[known[tr]], te[known[te]]
    # A separate copy of the backbone: the index's own one stays frozen and unchanged.
    bb = load_backbone(info.backbone, WeightsSpec.recorded(info))
    check_fingerprint(bb, info, directory)
    base = bb.model
    n_trainable = _trainable_tail(base, n_layers)
    if n_trainable == 0:
        raise VecsearchError(f"The last {n_layers} layers of {info.backbone} have no trainable weights; unfreeze more.")
    w, h = bb.input_size
    inputs = keras.Input((h, w, 3), name="image")
    x = _augmenter(seed)(inputs)
    x = base(x, training=False)  # BatchNorm in inference mode, as the transfer-learning guide says
    x = keras.layers.UnitNormalization(name="unit")(x)  # the head was trained on unit vectors
    outputs = head.model(x)
    model = keras.Model(inputs, outputs, name="finetune")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = bb.fingerprint
    pixels, ok = _load_pixels([ls.paths[i] for i in tr], bb.input_size)
    x_train = np.asarray(bb.spec.preprocess(pixels.astype(np.float32)), dtype=np.float32)
    y_train = np.searchsorted(head.classes_, y[tr][ok])
    callbacks = []
    if on_epoch:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e + 1, dict(logs or {}))))
    with keras_seeded(seed):
        fit = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0, callbacks=callbacks)
    base.trainable = False
    after = weights_fingerprint(base)
    out_dir = Path(directory) / TUNED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{name}.weights.h5"
    base.save_weights(weights_path)
    head_path = head.save(out_dir / f"{name}.keras")
    result = {
        "unfrozen_layers": int(n_layers),
        "trainable_weights": int(n_trainable),
        "epochs": int(epochs),
        "learning_rate": learning_rate,
        "weights_path": str(weights_path),
        "head_path": str(head_path),
        "weights_changed": before != after,
        "history": {k: [float(v) for v in vals] for k, vals in fit.history.items()},
    }
    if len(te):
        test_pixels, ok_te = _load_pixels([ls.paths[i] for i in te], bb.input_size)
        x_test = np.asarray(bb.spec.preprocess(test_pixels.astype(np.float32)), dtype=np.float32)
        probs = model.predict(x_test, batch_size=batch_size, verbose=0)
        result["test_accuracy"] = round(float(np.mean(head.classes_[np.argmax(probs, 1)] == y[te][ok_te])), 6)
    return result


def reembed_target(directory: Path, into: str | os.PathLike) -> Path:
    """The folder for a re-embedded index; refused when it is the index being tuned."""
    into = Path(into).expanduser()
    if into.resolve() == Path(directory).resolve():
        raise VecsearchError("The folder to re-embed into must be a new folder, not the index being tuned.")
    return into


@dataclass
class ReembedPlan:
    """A re-embedding prepared: the new index's folder and its own copy of the weights, the files and labels to carry over."""

    source: Path  # the index being tuned
    into: Path
    backbone: str
    weights: Path
    paths: list[str]
    labels: list[tuple[str, str, str | None, str]]  # (path, label, split, source)


def plan_reembed(store: Store, directory: Path, weights_path: str | os.PathLike, into: str | os.PathLike) -> ReembedPlan:
    """Check and prepare a new index at `into` with the tuned weights over the same images.

    The source index is left as it is: an index never mixes vectors of two weight sets. The
    index object then opens the new index, adds `paths` and calls `carry_over`.
    """
    info = store.require_info()
    into = reembed_target(directory, into)
    records = store.records()
    path_of = {r.id: path for path, r in records.items()}
    labels = [(path_of[i], label, split, source) for i, label, split, source in store.user_labels() if i in path_of]
    paths = sorted(path for path, r in records.items() if r.status == "ok" and os.path.exists(path))
    if not paths:
        raise VecsearchError("None of the indexed image files exist any more; nothing to re-embed.")
    # The new index keeps its own copy: a later --unfreeze run rewrites the source file.
    into.mkdir(parents=True, exist_ok=True)
    own = into / f"{info.backbone}.tuned.weights.h5"
    if not own.exists() or not filecmp.cmp(own, weights_path, shallow=False):
        shutil.copyfile(weights_path, own)
    return ReembedPlan(Path(directory), into, info.backbone, own, paths, labels)


def carry_over(
    plan: ReembedPlan,
    store: Store,
    directory: Path,
    *,
    head_path: str | os.PathLike | None = None,
    name: str = DEFAULT_NAME,
    metrics: dict | None = None,
) -> None:
    """Copy the labels (of the files the new index holds) and the tuned head into the re-embedded index."""
    by_path = {r.path: r.id for r in store.records().values() if r.status == "ok"}
    store.set_user_labels((by_path[path], label, split, source) for path, label, split, source in plan.labels if path in by_path)
    if head_path is not None:
        classifiers.save(store, directory, name, "head", load_head(head_path), {"tuned_from": str(plan.source)}, metrics or {})
