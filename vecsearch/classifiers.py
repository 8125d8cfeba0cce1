"""Saved classifiers: their names, files and rows, and the one shape of a classification.

Every classifier follows one protocol: `classes_` (sorted class names) and
`predict_proba(X)` on unit vectors, rows summing to 1. Models are saved inside the index
folder (`classifiers/<name>.pkl`, or `.keras` for a fine-tuned head) with a row in the
`classifiers` table, so `classify IMG` reuses them without training again. The pickles
are the index's own files: load only indexes you trust, as with any pickle.

Training lives in `classify` (k-NN, probe) and `finetune` (the head); both save and load
through here, so neither imports the other.
"""

from __future__ import annotations

import json
import pickle
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClassifierNotFoundError, VecsearchError
from .files import atomic_write
from .store import Store

KINDS = ("knn", "probe", "head")
CLASSIFIERS_DIR = "classifiers"
DEFAULT_TOP = 3
"""Classes listed per classified image unless told otherwise."""
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    """The name, if it can be a classifier's (it becomes a file name), else VecsearchError."""
    if not _NAME_RE.match(name or ""):
        raise VecsearchError(f"Bad classifier name {name!r}: use letters, digits, '_', '-', '.' (at most 64).")
    return name


def _path(directory: Path, name: str, kind: str) -> Path:
    return Path(directory) / CLASSIFIERS_DIR / f"{name}{'.keras' if kind == 'head' else '.pkl'}"


def save(store: Store, directory: Path, name: str, kind: str, model, params: dict, metrics: dict) -> Path:
    """Write the model into the index folder (atomically) and upsert its `classifiers` row."""
    check_name(name)
    if kind not in KINDS:
        raise VecsearchError(f"Unknown classifier kind {kind!r}; expected one of {', '.join(KINDS)}.")
    path = _path(directory, name, kind)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        if kind == "head":
            model.save(tmp)
        else:
            with open(tmp, "wb") as fh:
                pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)

    atomic_write(path, write, suffix=path.suffix)
    for other in KINDS:  # a name reused for another kind must not leave the old file behind
        stale = _path(directory, name, other)
        if stale != path:
            stale.unlink(missing_ok=True)
    rel = str(path.relative_to(directory))
    store.save_classifier_row(
        name, kind, rel, json.dumps(params, default=_json_default), json.dumps(metrics, default=_json_default)
    )
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def list_all(store: Store) -> list[dict]:
    """Trained classifiers, newest first: name, kind, path, created_at, params, metrics."""
    return [
        {
            "name": r.name,
            "kind": r.kind,
            "path": r.path,
            "created_at": r.created_at.isoformat(timespec="seconds") + "Z",
            "params": json.loads(r.params or "{}"),
            "metrics": json.loads(r.metrics or "{}"),
        }
        for r in store.classifier_rows()
    ]


def find(store: Store, name: str | None = None, kind: str | None = None) -> dict:
    """The row of `name` (None: the newest), which must be of `kind` when given."""
    rows = list_all(store)
    if name is not None:
        found = [r for r in rows if r["name"] == name]
        if not found:
            known = ", ".join(r["name"] for r in rows) or "none"
            raise ClassifierNotFoundError(f"No classifier named {name!r} in the index (trained: {known}).")
        if kind is not None and found[0]["kind"] != kind:
            raise ClassifierNotFoundError(f"Classifier {name!r} is a {found[0]['kind']} classifier, not {kind}.")
        return found[0]
    if kind is not None:
        rows = [r for r in rows if r["kind"] == kind]
    if not rows:
        what = {"head": "fine-tuned head; fine-tune one", None: "classifier; train one (knn or probe)"}.get(
            kind, f"{kind} classifier; train one"
        )
        raise ClassifierNotFoundError(f"No trained {what} first.", option="finetune" if kind == "head" else "train")
    return rows[0]


def load(directory: Path, row: dict):
    """The saved model of a row from `find`."""
    path = Path(directory) / row["path"]
    if not path.exists():
        raise ClassifierNotFoundError(f"The file of classifier {row['name']!r} is missing ({path}); train it again.")
    if row["kind"] == "head":
        from .head import load_head

        return load_head(path)
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, OSError) as e:
        raise VecsearchError(f"The file of classifier {row['name']!r} ({path}) cannot be read ({e}); train it again.") from e


def predict(clf, X, dim: int | None = None) -> list[tuple[str, float]]:
    """(best label, its probability) per row of X (unit vectors), with any classifier of the protocol."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if not len(X):
        return []
    if dim is not None and X.shape[1] != dim:
        raise VecsearchError(f"Vectors have {X.shape[1]} dimensions; the index has {dim}.")
    proba = np.asarray(clf.predict_proba(X))
    best = np.argmax(proba, axis=1)
    classes = np.asarray(clf.classes_).astype(str)
    return [(str(classes[j]), float(proba[r, j])) for r, j in enumerate(best)]


@dataclass
class Classification:
    """One image classified by a saved classifier: the same shape in Python, `--json` and HTTP.

    `top` holds the best classes first, each {"label", "confidence"}; `path` is the file's
    (None for an upload or a vector).
    """

    classifier: str
    kind: str
    label: str
    confidence: float
    top: list[dict] = field(default_factory=list)
    path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def classification(clf, row: dict, vector: np.ndarray, *, top: int = DEFAULT_TOP, path: str | None = None) -> Classification:
    """Classify one unit vector with a loaded classifier and its row; ties go to the smaller name."""
    proba = np.asarray(clf.predict_proba(np.asarray(vector, np.float32).reshape(1, -1)))[0]
    classes = np.asarray(clf.classes_).astype(str)
    order = sorted(range(len(classes)), key=lambda i: (-float(proba[i]), classes[i]))[: max(1, top)]
    best = order[0]
    return Classification(
        classifier=row["name"],
        kind=row["kind"],
        label=str(classes[best]),
        confidence=round(float(proba[best]), 6),
        top=[{"label": str(classes[j]), "confidence": round(float(proba[j]), 6)} for j in order],
        path=path,
    )


class LoadedClassifiers:
    """Saved classifiers kept loaded (the last `keep`) while their row is unchanged.

    A retrained classifier is picked up (its row's created_at changes), and a server does
    not unpickle one per request.
    """

    def __init__(self, directory: Path, keep: int = 8):
        self.directory = directory
        self.keep = keep
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()  # (name, created_at) -> model
        self._lock = threading.Lock()

    def get(self, row: dict) -> Any:
        """The loaded model of a classifier row (`find`)."""
        key = (row["name"], row["created_at"])
        with self._lock:
            if key not in self._models:
                self._models[key] = load(self.directory, row)
                while len(self._models) > self.keep:
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return self._models[key]
