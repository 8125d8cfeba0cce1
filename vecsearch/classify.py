"""Classifiers over the stored vectors: k-NN and a linear probe; evaluation; saved models.

Every classifier follows one protocol: `classes_` (sorted class names) and
`predict_proba(X)` on unit vectors, rows summing to 1. Models are saved inside the index
folder (`classifiers/<name>.pkl`, or `.keras` for a fine-tuned head) with a row in the
`classifiers` table, so `classify IMG` reuses them without training again. The pickles
are the index's own files: load only indexes you trust, as with any pickle.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .classes import LabelledSet, labelled_vectors, unlabelled_ids
from .dupes import vectors_for
from .errors import BadLabelsError, ClassifierNotFoundError, InputNotFoundError, NoLabelsError, VecsearchError
from .vectors import atomic_write

log = logging.getLogger(__name__)

KINDS = ("knn", "probe", "head")
CLASSIFIERS_DIR = "classifiers"
PROBE_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
TEST_SIZE = 0.25
SEED = 0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESCORE_MARGIN = 16  # extra FAISS candidates re-ranked exactly, so float32 near-ties can't flip the top k


# -- the models ------------------------------------------------------------------------
def _unit64(X) -> np.ndarray:
    """Rows scaled to unit length in float64 (zero rows stay zero), as sklearn's `normalize`."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    norms[norms == 0] = 1.0
    return X / norms[:, None]


class KnnClassifier:
    """Cosine-distance-weighted vote of the k nearest training vectors.

    Neighbours come from a FAISS inner-product index over the training vectors; the
    candidates are re-ranked with exact float64 cosine distances, and each votes with
    weight 1/distance -- the rule of sklearn's KNeighborsClassifier(metric="cosine",
    weights="distance"), including its special case: neighbours at distance 0 share all
    the weight.
    """

    kind = "knn"

    def __init__(self, k: int = 5):
        if k < 1:
            raise VecsearchError(f"k must be at least 1, got {k}.")
        self.k = int(k)
        self._faiss = None

    def fit(self, X, y) -> "KnnClassifier":
        self.X_ = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y).astype(str)
        self.classes_, self.y_idx_ = np.unique(y, return_inverse=True)
        self._faiss = None
        return self

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_faiss"] = None  # rebuilt on load: cheaper than storing it twice
        return state

    def _index(self):
        if self._faiss is None:
            import faiss

            index = faiss.IndexFlatIP(self.X_.shape[1])
            index.add(np.ascontiguousarray(_unit64(self.X_), dtype=np.float32))
            self._faiss = index
        return self._faiss

    def kneighbors(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(cosine distances float64, training positions) of the k nearest, nearest first."""
        Q = _unit64(X)
        k = min(self.k, len(self.X_))
        fetch = min(len(self.X_), k + _RESCORE_MARGIN)
        _, cand = self._index().search(np.ascontiguousarray(Q, dtype=np.float32), fetch)
        T = _unit64(self.X_)
        dist = np.empty((len(Q), k))
        ind = np.empty((len(Q), k), dtype=np.int64)
        for r in range(len(Q)):
            c = cand[r][cand[r] >= 0]
            d = np.clip(1.0 - T[c] @ Q[r], 0.0, 2.0)
            order = np.lexsort((c, d))[:k]  # by distance, then training position
            dist[r], ind[r] = d[order], c[order]
        return dist, ind

    def predict_proba(self, X) -> np.ndarray:
        dist, ind = self.kneighbors(X)
        with np.errstate(divide="ignore"):
            w = 1.0 / dist
        inf = np.isinf(w)
        rows = inf.any(axis=1)
        w[rows] = inf[rows]
        proba = np.zeros((len(dist), len(self.classes_)))
        for r in range(len(dist)):
            np.add.at(proba[r], self.y_idx_[ind[r]], w[r])
        total = proba.sum(axis=1, keepdims=True)
        total[total == 0] = 1.0
        return proba / total

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class RowSpan:
    """Project onto the span of the training rows when there are fewer rows than features.

    An L2-penalised linear model's weights lie in that span (w = X^T a), so fitting on the
    coordinates changes no prediction while 2048-d vectors of a few hundred images shrink
    to a few hundred columns: the cross-validated probe gets several times faster.
    """

    def __init__(self, tol: float = 1e-10):
        self.tol = tol

    def fit(self, X, y=None) -> "RowSpan":
        X = np.asarray(X, dtype=np.float64)
        self.basis_ = None
        if X.shape[0] < X.shape[1]:
            _, s, vt = np.linalg.svd(X, full_matrices=False)
            keep = s > self.tol * max(1.0, float(s[0]) if len(s) else 1.0)
            self.basis_ = np.ascontiguousarray(vt[keep].T)
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        return X if self.basis_ is None else X @ self.basis_

    def fit_transform(self, X, y=None):
        return self.fit(X, y).transform(X)

    def get_params(self, deep: bool = True) -> dict:
        return {"tol": self.tol}

    def __repr__(self) -> str:
        return f"RowSpan(tol={self.tol})"

    def set_params(self, **params) -> "RowSpan":
        for k, v in params.items():
            setattr(self, k, v)
        return self


def _probe_estimator(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardising matters: pooled CNN features share a large common direction.
    return make_pipeline(StandardScaler(), RowSpan(), LogisticRegression(C=C, max_iter=5000))


def fit_probe(X, y, *, seed: int = SEED, Cs=PROBE_CS):
    """Multinomial logistic regression on standardised vectors, C chosen by stratified CV.

    Returns (fitted pipeline, chosen C, CV accuracy or None when too few images per class).
    """
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    y = np.asarray(y).astype(str)
    _, counts = np.unique(y, return_counts=True)
    folds = int(min(5, counts.min()))
    if folds < 2:
        # No fold can hold every class: keep sklearn's default strength.
        return _probe_estimator(1.0).fit(X, y), 1.0, None
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    grid = GridSearchCV(_probe_estimator(1.0), {"logisticregression__C": list(Cs)}, cv=cv, scoring="accuracy")
    grid.fit(X, y)
    return grid.best_estimator_, float(grid.best_params_["logisticregression__C"]), float(grid.best_score_)


def _make(kind: str, k: int, seed: int):
    """A fitter for the kind: (X, y) -> (model, params chosen while fitting)."""
    if kind == "knn":
        return lambda X, y: (KnnClassifier(k).fit(X, y), {})
    if kind == "probe":
        def fit(X, y):
            model, C, cv_acc = fit_probe(X, y, seed=seed)
            return model, {"C": C, "cv_accuracy": None if cv_acc is None else round(cv_acc, 6)}
        return fit
    raise VecsearchError(f"Unknown classifier kind {kind!r}; expected knn or probe.")


def _one_blas_thread():
    """These matrices are small: threaded BLAS spends more on waking threads than it saves
    (ten times slower on a busy 2-core machine), so the fits run single-threaded."""
    import scipy.optimize  # noqa: F401  (load every BLAS first: only loaded ones are limited)
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


# -- evaluation --------------------------------------------------------------------------
@dataclass
class Evaluation:
    method: str  # "test split" | "holdout 25%" | "stratified N-fold"
    n_train: int
    n_test: int
    classes: list[str]
    accuracy: float
    report: dict  # sklearn classification_report(output_dict=True)
    confusion: list[list[int]]  # rows true, columns predicted, in `classes` order
    test_ids: list[int] = field(default_factory=list)
    test_pred: list[str] = field(default_factory=list)
    fit_params: list[dict] = field(default_factory=list)  # what each evaluation fit chose (the probe's C)

    def to_dict(self) -> dict:
        return asdict(self)


def check_labels(ls: LabelledSet) -> None:
    """Refuse label sets that cannot train or be evaluated, with a message that says what to do."""
    if len(ls) == 0:
        raise NoLabelsError("No labelled images in the index; run `vecsearch teach DIR` (one sub-folder per class) first.")
    classes, counts = np.unique(ls.y, return_counts=True)
    if len(classes) < 2:
        n = int(counts[0])
        raise BadLabelsError(f"Only one class ({str(classes[0])!r}, {n} image{'s' if n != 1 else ''}) is labelled; "
                             "a classifier needs at least 2. Label images of another class with `vecsearch teach`.")
    if ls.has_split():
        train = ls.split != "test"
        tr_classes = set(ls.y[train].tolist())
        if len(tr_classes) < 2:
            raise BadLabelsError("The training part (images not in test/) has fewer than 2 classes.")
        unseen = sorted(set(ls.y[~train].tolist()) - tr_classes)
        if unseen:
            raise BadLabelsError(f"Class(es) {', '.join(unseen)} appear only in the test split; add training images for them.")
        return
    single = [str(c) for c, n in zip(classes, counts) if n < 2]
    if single:
        raise BadLabelsError(
            f"Class(es) {', '.join(single)} have a single image; a stratified evaluation needs at least 2 "
            "per class. Label more images, or give a test/ split.")


def split_parts(ls: LabelledSet, seed: int = SEED) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(method, [(train positions, test positions), ...]): the given test split as-is, else a
    stratified 25% hold-out (random_state=seed), else stratified k-fold when the hold-out
    would be smaller than the number of classes."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    pos = np.arange(len(ls))
    if ls.has_split():
        test = ls.split == "test"
        return "test split", [(pos[~test], pos[test])]
    classes, counts = np.unique(ls.y, return_counts=True)
    n_test = int(np.ceil(TEST_SIZE * len(ls)))
    if n_test >= len(classes) and len(ls) - n_test >= len(classes):
        tr, te = train_test_split(pos, test_size=TEST_SIZE, stratify=ls.y, random_state=seed)
        return f"holdout {int(TEST_SIZE * 100)}%", [(np.sort(tr), np.sort(te))]
    folds = int(min(5, counts.min()))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return f"stratified {folds}-fold", [(tr, te) for tr, te in cv.split(ls.X, ls.y)]


def evaluate(ls: LabelledSet, fitter, seed: int = SEED) -> Evaluation:
    """Fit on the training part(s), predict the held-out part(s), and score."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    method, parts = split_parts(ls, seed)
    pred = np.empty(len(ls), dtype=object)
    tested = np.zeros(len(ls), bool)
    n_train = 0
    fit_params = []
    for tr, te in parts:
        model, chosen = fitter(ls.X[tr], ls.y[tr])
        fit_params.append(chosen)
        pred[te] = model.predict(ls.X[te])
        tested[te] = True
        n_train = max(n_train, len(tr))
    y_true = ls.y[tested].astype(str)
    y_pred = pred[tested].astype(str)
    classes = sorted(set(ls.y.tolist()))
    return Evaluation(
        method=method,
        n_train=n_train,
        n_test=int(tested.sum()),
        classes=classes,
        accuracy=round(float(accuracy_score(y_true, y_pred)), 6),
        report=classification_report(y_true, y_pred, labels=classes, output_dict=True, zero_division=0),
        confusion=confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        test_ids=[int(i) for i in ls.ids[tested]],
        test_pred=y_pred.tolist(),
        fit_params=fit_params,
    )


# -- saved classifiers --------------------------------------------------------------------
def _check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise VecsearchError(f"Bad classifier name {name!r}: use letters, digits, '_', '-', '.' (at most 64).")
    return name


def _classifier_path(index, name: str, kind: str) -> Path:
    return Path(index.directory) / CLASSIFIERS_DIR / f"{name}{'.keras' if kind == 'head' else '.pkl'}"


def save_classifier(index, name: str, kind: str, model, params: dict, metrics: dict) -> Path:
    """Write the model into the index folder (atomically) and upsert its `classifiers` row."""
    _check_name(name)
    if kind not in KINDS:
        raise VecsearchError(f"Unknown classifier kind {kind!r}; expected one of {', '.join(KINDS)}.")
    path = _classifier_path(index, name, kind)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        if kind == "head":
            model.save(tmp)
        else:
            with open(tmp, "wb") as fh:
                pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)

    atomic_write(path, write, suffix=path.suffix)
    for other in KINDS:  # a name reused for another kind must not leave the old file behind
        stale = _classifier_path(index, name, other)
        if stale != path:
            stale.unlink(missing_ok=True)
    rel = str(path.relative_to(index.directory))
    index.store.save_classifier_row(name, kind, rel, json.dumps(params, default=_json_default),
                                    json.dumps(metrics, default=_json_default))
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def list_classifiers(index) -> list[dict]:
    """Trained classifiers of the index, newest first: name, kind, path, created_at, params, metrics."""
    return [{
        "name": r.name,
        "kind": r.kind,
        "path": r.path,
        "created_at": r.created_at.isoformat(timespec="seconds") + "Z",
        "params": json.loads(r.params or "{}"),
        "metrics": json.loads(r.metrics or "{}"),
    } for r in index.store.classifier_rows()]


def classifier_info(index, name: str | None = None, kind: str | None = None) -> dict:
    """The row of `name` (None: the newest), which must be of `kind` when given."""
    rows = list_classifiers(index)
    if name is not None:
        rows = [r for r in rows if r["name"] == name]
        if not rows:
            known = ", ".join(r["name"] for r in list_classifiers(index)) or "none"
            raise ClassifierNotFoundError(f"No classifier named {name!r} in the index (trained: {known}).")
        if kind is not None and rows[0]["kind"] != kind:
            raise ClassifierNotFoundError(f"Classifier {name!r} is a {rows[0]['kind']} classifier, not {kind}.")
        return rows[0]
    if kind is not None:
        rows = [r for r in rows if r["kind"] == kind]
    if not rows:
        what = {"head": "fine-tuned head; run `vecsearch finetune`",
                None: "classifier; run `vecsearch classify --knn` or `--probe`"}.get(kind, f"{kind} classifier; run `vecsearch classify --{kind}`")
        raise ClassifierNotFoundError(f"No trained {what} first.")
    return rows[0]


def load_classifier(index, name: str | None = None):
    """The saved model `name` (None: the most recently trained)."""
    row = classifier_info(index, name)
    path = Path(index.directory) / row["path"]
    if not path.exists():
        raise ClassifierNotFoundError(f"The file of classifier {row['name']!r} is missing ({path}); train it again.")
    if row["kind"] == "head":
        from .finetune import load_head

        return load_head(path)
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, OSError) as e:
        raise VecsearchError(f"The file of classifier {row['name']!r} ({path}) cannot be read ({e}); train it again.") from e


def predict(index, clf, X) -> list[tuple[str, float]]:
    """(label, confidence) per row of X (unit vectors) with any classifier of the protocol."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if not len(X):
        return []
    info = index.info if index is not None else None
    if info is not None and X.shape[1] != info.dim:
        raise VecsearchError(f"Vectors have {X.shape[1]} dimensions; the index has {info.dim}.")
    proba = np.asarray(clf.predict_proba(X))
    best = np.argmax(proba, axis=1)
    classes = np.asarray(clf.classes_).astype(str)
    return [(str(classes[j]), float(proba[r, j])) for r, j in enumerate(best)]


# -- the whole job ----------------------------------------------------------------------
@dataclass
class TrainResult:
    name: str
    kind: str
    params: dict
    evaluation: Evaluation | None  # None for a head (it was evaluated when it was trained)
    metrics: dict
    predictions: list[dict]  # {"id", "path", "label", "confidence"} for unlabelled images
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["evaluation"] is not None:
            d["evaluation"].pop("test_ids", None)
            d["evaluation"].pop("test_pred", None)
        return d


def predict_unlabelled(index, name: str, clf) -> list[dict]:
    """Predict every embedded image without a user label and store the results under `name`."""
    ids = unlabelled_ids(index)
    rows: list[tuple[int, str, float]] = []
    if len(ids):
        ids, X, _ = index.store.vectors(ids, dim=index.info.dim)
        rows = [(int(i), label, conf) for i, (label, conf) in zip(ids, predict(index, clf, X))]
    index.store.set_predictions(name, rows)
    recs = index.store.images(i for i, _, _ in rows)
    return [{"id": i, "path": recs[i].path, "label": label, "confidence": round(conf, 6)} for i, label, conf in rows]


def train(index, kind: str, *, k: int = 5, name: str | None = None, seed: int = SEED) -> TrainResult:
    """Train a k-NN or probe on the labelled vectors, evaluate it honestly, save it, predict the rest.

    The evaluation uses the labels' test split as-is, else a stratified 25% hold-out (or
    stratified k-fold when too few images); the saved model is then fitted on every
    labelled image.
    """
    started = time.perf_counter()
    if kind not in ("knn", "probe"):
        raise VecsearchError(f"Unknown classifier kind {kind!r}; expected knn or probe.")
    name = _check_name(name or kind)
    ls = labelled_vectors(index)
    check_labels(ls)
    fitter = _make(kind, k, seed)
    with _one_blas_thread():
        evaluation = evaluate(ls, fitter, seed)
        model, fitted = fitter(ls.X, ls.y)
    params = {"k": k, "weights": "distance", "metric": "cosine"} if kind == "knn" else {"Cs": list(PROBE_CS), "scaler": "standard"}
    params |= fitted | {"seed": seed, "n_train": len(ls), "dim": int(ls.X.shape[1])}
    metrics = {"accuracy": evaluation.accuracy, "method": evaluation.method, "n_test": evaluation.n_test,
               "classes": evaluation.classes, "confusion": evaluation.confusion, "report": evaluation.report}
    save_classifier(index, name, kind, model, params, metrics)
    preds = predict_unlabelled(index, name, model)
    return TrainResult(name, kind, params, evaluation, metrics, preds, round(time.perf_counter() - started, 3))


def use_saved(index, name: str | None = None, kind: str | None = None) -> TrainResult:
    """Predict the unlabelled images with an already trained classifier (e.g. a fine-tuned head)."""
    started = time.perf_counter()
    row = classifier_info(index, name, kind)
    clf = load_classifier(index, row["name"])
    preds = predict_unlabelled(index, row["name"], clf)
    return TrainResult(row["name"], row["kind"], row["params"], None, row["metrics"], preds,
                       round(time.perf_counter() - started, 3))


def classify_image(index, image: str | os.PathLike, name: str | None = None, top: int = 3) -> dict:
    """Predict one image file with a saved classifier; an indexed, unchanged file reuses its vector."""
    p = Path(image).expanduser()
    if not p.is_file():
        raise InputNotFoundError(f"No such file: {p}")
    row = classifier_info(index, name)
    clf = load_classifier(index, row["name"])
    proba = np.asarray(clf.predict_proba(vectors_for(index, [p])))[0]
    classes = np.asarray(clf.classes_).astype(str)
    order = np.argsort(-proba, kind="stable")[:max(1, top)]
    return {
        "path": str(p.resolve()),
        "classifier": row["name"],
        "kind": row["kind"],
        "label": str(classes[order[0]]),
        "confidence": round(float(proba[order[0]]), 6),
        "top": [{"label": str(classes[j]), "confidence": round(float(proba[j]), 6)} for j in order],
    }


def stored_predictions(index, name: str | None = None) -> list[dict]:
    """Stored predictions (of `name`, or of every classifier), with paths."""
    rows = index.store.predictions(name)
    recs = index.store.images(r[0] for r in rows)
    return [{"id": i, "path": recs[i].path, "classifier": c, "label": label, "confidence": round(conf, 6)}
            for i, c, label, conf in rows if i in recs]

