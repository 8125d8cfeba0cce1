"""Training classifiers over the stored vectors: k-NN and a linear probe, evaluated honestly.

The evaluation uses the labels' test split as-is, else a stratified hold-out (or k-fold
when there are too few images); the saved model is then fitted on every labelled image
and predicts every unlabelled one. Saving, loading and the result of classifying one
image are `classifiers`' job; the fine-tuned head trains in `finetune`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import classifiers
from .classes import SEED, LabelledSet, check_labels, labelled_vectors, split_parts, unlabelled_ids
from .errors import VecsearchError
from .store import Store
from .vectors import normalize

log = logging.getLogger(__name__)

PROBE_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
DEFAULT_K = 5
"""Neighbours that vote in the k-NN classifier unless told otherwise."""
_RESCORE_MARGIN = 16  # extra FAISS candidates re-ranked exactly, so float32 near-ties can't flip the top k


# -- the models ------------------------------------------------------------------------
class KnnClassifier:
    """Cosine-distance-weighted vote of the k nearest training vectors.

    Neighbours come from a FAISS inner-product index over the training vectors; the
    candidates are re-ranked with exact float64 cosine distances, and each votes with
    weight 1/distance -- the rule of sklearn's KNeighborsClassifier(metric="cosine",
    weights="distance"), including its special case: neighbours at distance 0 share all
    the weight.
    """

    kind = "knn"

    def __init__(self, k: int = DEFAULT_K):
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
            index.add(np.ascontiguousarray(normalize(self.X_, np.float64), dtype=np.float32))
            self._faiss = index
        return self._faiss

    def kneighbors(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(cosine distances float64, training positions) of the k nearest, nearest first."""
        Q = normalize(np.atleast_2d(np.asarray(X, np.float64)), np.float64)
        k = min(self.k, len(self.X_))
        fetch = min(len(self.X_), k + _RESCORE_MARGIN)
        _, cand = self._index().search(np.ascontiguousarray(Q, dtype=np.float32), fetch)
        T = normalize(self.X_, np.float64)
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
    skipped: int = 0  # predictions not stored: their images were removed meanwhile by another indexer

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["evaluation"] is not None:
            d["evaluation"].pop("test_ids", None)
            d["evaluation"].pop("test_pred", None)
        return d


def predict_unlabelled(store: Store, name: str, clf) -> tuple[list[dict], int]:
    """Predict every embedded image without a user label and store the results under `name`.

    Returns (predictions, how many were skipped because another indexer removed their
    images meanwhile).
    """
    ids = unlabelled_ids(store)
    rows: list[tuple[int, str, float]] = []
    if len(ids):
        dim = store.require_info().dim
        ids, X, _ = store.vectors(ids, dim=dim)
        rows = [(int(i), label, conf) for i, (label, conf) in zip(ids, classifiers.predict(clf, X, dim), strict=False)]
    written = store.set_predictions(name, rows)
    recs = store.images(i for i, _, _ in rows)
    preds = [
        {"id": i, "path": recs[i].path, "label": label, "confidence": round(conf, 6)} for i, label, conf in rows if i in recs
    ]
    skipped = len(rows) - written
    if skipped:
        log.warning("%d prediction(s) of %s skipped: their images were removed meanwhile", skipped, name)
    return preds, skipped


def train(
    store: Store, directory: Path, kind: str, *, k: int = DEFAULT_K, name: str | None = None, seed: int = SEED
) -> TrainResult:
    """Train a k-NN or probe on the labelled vectors, evaluate it honestly, save it, predict the rest."""
    started = time.perf_counter()
    if kind not in ("knn", "probe"):
        raise VecsearchError(f"Unknown classifier kind {kind!r}; expected knn or probe.")
    name = classifiers.check_name(name or kind)
    ls = labelled_vectors(store)
    check_labels(ls)
    fitter = _make(kind, k, seed)
    with _one_blas_thread():
        evaluation = evaluate(ls, fitter, seed)
        model, fitted = fitter(ls.X, ls.y)
    params = (
        {"k": k, "weights": "distance", "metric": "cosine"} if kind == "knn" else {"Cs": list(PROBE_CS), "scaler": "standard"}
    )
    params |= fitted | {"seed": seed, "n_train": len(ls), "dim": int(ls.X.shape[1])}
    metrics = {
        "accuracy": evaluation.accuracy,
        "method": evaluation.method,
        "n_test": evaluation.n_test,
        "classes": evaluation.classes,
        "confusion": evaluation.confusion,
        "report": evaluation.report,
    }
    classifiers.save(store, directory, name, kind, model, params, metrics)
    preds, skipped = predict_unlabelled(store, name, model)
    return TrainResult(name, kind, params, evaluation, metrics, preds, round(time.perf_counter() - started, 3), skipped)


def apply_saved(store: Store, directory: Path, name: str | None = None, kind: str | None = None) -> TrainResult:
    """Predict the unlabelled images with an already trained classifier (e.g. a fine-tuned head)."""
    started = time.perf_counter()
    row = classifiers.find(store, name, kind)
    clf = classifiers.load(directory, row)
    preds, skipped = predict_unlabelled(store, row["name"], clf)
    return TrainResult(
        row["name"], row["kind"], row["params"], None, row["metrics"], preds, round(time.perf_counter() - started, 3), skipped
    )
