"""The search filters (folder, taught class, predicted class) and the limits every search checks.

A filter becomes the ascending ids that pass it, and the searcher keeps to them while staying
exact (`exact.Searcher`), so a filtered search still returns k hits whenever k images pass.
"""

from __future__ import annotations

import os
from typing import Mapping, TypedDict

import numpy as np

from .. import classifiers
from ..errors import VecsearchError, check_keywords
from ..files import absolute
from ..store import Store


class SearchFilters(TypedDict, total=False):
    """The optional filters every search takes, combined with AND (see `VecIndex.search_vector`)."""

    under: str | os.PathLike | None
    label: str | None
    predicted: str | None
    classifier: str | None
    min_score: float | None


FILTER_NAMES = ("under", "label", "predicted", "classifier", "min_score")


def check_filters(what: str, k: object, filters: Mapping[str, object]) -> tuple[dict, float | None]:
    """(the id filters for `allowed_ids`, min_score): a misspelt filter is a TypeError, not ignored."""
    check_keywords(what, filters, FILTER_NAMES)
    ids = {name: value for name, value in filters.items() if name != "min_score"}
    min_score = filters.get("min_score")
    check_limits(k, min_score)
    return ids, None if min_score is None else float(min_score)  # type: ignore[arg-type]


def check_limits(k: object, min_score: object) -> None:
    """Refuse a k or a min_score no search could honour, before any work."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise VecsearchError(f"k must be at least 1, got {k}.")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.floating)) or not -1.0 <= float(min_score) <= 1.0
    ):
        raise VecsearchError(f"min_score must be a number from -1 to 1 (a cosine similarity), got {min_score!r}.")


def allowed_ids(
    store: Store,
    under: str | os.PathLike | None = None,
    label: str | None = None,
    predicted: str | None = None,
    classifier: str | None = None,
) -> np.ndarray | None:
    """Ids that pass the search filters (ascending), or None when no filter is given."""
    if predicted is None and classifier is not None:
        raise VecsearchError("classifier= names whose predictions `predicted` filters by; give predicted= too.")
    sets: list[np.ndarray] = []
    if under is not None:
        if not isinstance(under, (str, os.PathLike)) or not os.fspath(under):
            raise VecsearchError(f"under must be a folder path, got {under!r}.")
        sets.append(store.ids_under([str(absolute(under))]))
    if label is not None:
        label = str(label)
        ids = store.ids_with_user_label(label)
        if not len(ids):
            known = sorted(store.label_counts())
            raise VecsearchError(
                f"No image is taught the class {label!r}; the classes taught are: "
                f"{', '.join(map(repr, known)) if known else 'none (see teach)'}."
            )
        sets.append(ids)
    if predicted is not None:
        row = classifiers.find(store, classifier)
        sets.append(store.ids_predicted(row["name"], str(predicted)))
    if not sets:
        return None
    out = sets[0]
    for other in sets[1:]:
        out = np.intersect1d(out, other, assume_unique=True)
    return out
