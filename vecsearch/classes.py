"""Classes of the user's own: labels from class folders or a CSV, stored per image.

Folder layout follows `keras.utils.image_dataset_from_directory`: every direct
sub-folder of the root is a class and every image below it (at any depth) belongs to
it. When the root holds `train/` and/or `test/` folders, each of them is such a root and
the folder name becomes the image's split. A CSV has rows `path,label[,split]`, paths
relative to the CSV's folder or absolute; a header row is optional.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import files, images
from .errors import (
    BadImageError,
    BadLabelsError,
    InputNotFoundError,
    NoImagesError,
    NoLabelsError,
    NotIndexedError,
    VecsearchError,
)
from .indexer import is_unchanged
from .store import ImageRecord, Store

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
TEST_SIZE = 0.25
"""Share of the labelled images held out for evaluation when the labels give no test split."""
SEED = 0
"""Seed of every split and fit, so two runs on the same labels agree."""
_HEADER_WORDS = {"path", "file", "filename", "image"}
MAX_CSV_BYTES = 256 * 1024 * 1024
"""Largest labels CSV read."""


@dataclass(frozen=True)
class LabelRow:
    """One labelled file, before it is matched to an indexed image."""

    path: Path  # absolute, links kept as given (files.absolute)
    label: str
    split: str | None  # "train" | "test" | None


@dataclass
class LabelledSet:
    """The labelled, successfully embedded images of an index, ordered by image id."""

    ids: np.ndarray  # int64 (n,)
    X: np.ndarray  # float32 (n, dim) unit vectors
    y: np.ndarray  # str labels (n,)
    split: np.ndarray  # "train" | "test" | "" (n,)
    paths: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.y.tolist()))

    def has_split(self) -> bool:
        """True when the user gave a test split to evaluate on as-is."""
        return bool((self.split == "test").any())


@dataclass
class TeachSummary:
    """What one label import did."""

    source: str
    kind: str  # "folder" | "csv"
    labelled: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> split ("" none) -> n
    failed: list[dict] = field(default_factory=list)  # {"path", "reason"}: files that could not be embedded
    indexed: int = 0  # images embedded on the way
    skipped: int = 0  # labels not stored: their images were removed meanwhile by another indexer

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "labelled": self.labelled,
            "indexed": self.indexed,
            "counts": self.counts,
            "failed": self.failed,
            "skipped": self.skipped,
        }


# -- reading the labels ------------------------------------------------------------
def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def rows_from_folder(root: str | os.PathLike) -> list[LabelRow]:
    """Labels from class sub-folders of `root` (with `train/`/`test/` splits when present)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputNotFoundError(f"No such folder: {root}")
    subdirs = _class_dirs(root)
    split_dirs = [d for d in subdirs if d.name in SPLITS]
    if split_dirs:
        others = [d.name for d in subdirs if d.name not in SPLITS]
        if others:
            log.warning("ignoring %s next to the split folders in %s", ", ".join(others), root)
        roots: list[tuple[Path, str | None]] = [(d, d.name) for d in split_dirs]
    else:
        roots = [(root, None)]
    rows: list[LabelRow] = []
    for base, split in roots:
        for class_dir in _class_dirs(base):
            for f in images.iter_image_files([class_dir]):
                rows.append(LabelRow(Path(f), class_dir.name, split))
    if not rows:
        raise NoImagesError(
            f"No images in class folders under {root}. Expected {root}/<class>/*.jpg "
            f"(or {root}/train/<class>/... and {root}/test/<class>/...)."
        )
    return rows


def rows_from_csv(csv_path: str | os.PathLike) -> list[LabelRow]:
    """Labels from a CSV of `path,label[,split]`; every listed file must exist."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise InputNotFoundError(f"No such file: {csv_path}")
    base = files.absolute(csv_path).parent
    rows: list[LabelRow] = []
    missing: list[str] = []
    try:
        text = files.read_file(csv_path, MAX_CSV_BYTES).decode("utf-8-sig")
    except BadImageError as e:
        raise VecsearchError(f"Cannot read {csv_path}: {e.reason}.") from None
    except UnicodeDecodeError as e:
        line = text_line(e)
        raise VecsearchError(
            f"{csv_path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}): save it as UTF-8 and run again."
        ) from None
    fh = io.StringIO(text, newline="")
    for lineno, rec in enumerate(csv.reader(fh), start=1):
        rec = [c.strip() for c in rec]
        if not rec or not any(rec) or rec[0].startswith("#"):
            continue
        if lineno == 1 and rec[0].lower() in _HEADER_WORDS:
            continue
        if len(rec) < 2 or not rec[1]:
            raise VecsearchError(f"{csv_path}, line {lineno}: expected `path,label[,split]`, got {','.join(rec)!r}.")
        split = rec[2].lower() if len(rec) > 2 and rec[2] else None
        if split is not None and split not in SPLITS:
            raise VecsearchError(f"{csv_path}, line {lineno}: split must be train or test, got {rec[2]!r}.")
        p = Path(rec[0]).expanduser()
        p = files.absolute(p if p.is_absolute() else base / p)
        if not p.is_file():
            missing.append(rec[0])
            continue
        rows.append(LabelRow(p, rec[1], split))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputNotFoundError(
            f"{len(missing)} path(s) in {csv_path} do not exist (relative paths are read from {base}): {shown}"
        )
    if not rows:
        raise NoLabelsError(f"{csv_path} has no `path,label` rows.")
    return rows


def text_line(e: UnicodeDecodeError) -> int:
    """The 1-based line of the byte that failed to decode."""
    return e.object[: e.start].count(b"\n") + 1


def read_label_rows(source: str | os.PathLike) -> tuple[str, list[LabelRow]]:
    """("folder" | "csv", rows) for a class-folder root or a CSV file."""
    p = Path(source).expanduser()
    if p.is_dir():
        return "folder", rows_from_folder(p)
    if p.is_file():
        return "csv", rows_from_csv(p)
    raise InputNotFoundError(f"No such folder or CSV file: {p}")


# -- storing them -------------------------------------------------------------------
@dataclass
class TeachPlan:
    """A label import read and checked: what to index first (`to_index`), then what to label."""

    summary: TeachSummary
    rows: dict[str, LabelRow]  # by path
    records: dict[str, ImageRecord]  # the index's records when planned
    to_index: list[Path]  # roots to pass to the index's `add` first; empty when every file is indexed


def plan_teach(store: Store, source: str | os.PathLike) -> TeachPlan:
    """Read labels from class folders or a CSV, and find the files to index before they are stored.

    The index object indexes `to_index` (its own `add`), then calls `apply_teach`.
    """
    kind, rows = read_label_rows(source)
    by_path: dict[str, LabelRow] = {}
    for r in rows:
        prev = by_path.get(str(r.path))
        if prev is not None and (prev.label, prev.split) != (r.label, r.split):
            raise VecsearchError(f"{r.path} is given two classes: {prev.label!r} and {r.label!r}.")
        by_path[str(r.path)] = r
    summary = TeachSummary(source=str(files.absolute(source)), kind=kind)
    records = store.records()
    todo = [Path(p) for p in by_path if p not in records or not is_unchanged(records[p], Path(p))]
    # A folder root is passed whole so the indexer also notices files gone from it.
    roots = ([Path(summary.source), *todo] if kind == "folder" else todo) if todo else []
    return TeachPlan(summary, by_path, records, roots)


def apply_teach(store: Store, plan: TeachPlan, *, replace: bool = False) -> TeachSummary:
    """Store the planned labels of the files now indexed; files that could not be embedded are reported
    in `failed` and stay unlabelled. With replace, every earlier label is dropped first."""
    summary, kind = plan.summary, plan.summary.kind
    records = store.records() if plan.to_index else plan.records
    label_rows = []
    for p, r in plan.rows.items():
        rec = records.get(p)
        if rec is None or rec.status != "ok":
            summary.failed.append({"path": p, "reason": rec.reason if rec is not None and rec.reason else "not indexed"})
            continue
        label_rows.append((rec.id, r.label, r.split, kind))
    if replace:
        store.clear_user_labels()
    summary.labelled = store.set_user_labels(label_rows)
    summary.skipped = len(label_rows) - summary.labelled
    if summary.skipped:
        alive = set(store.images(r[0] for r in label_rows))
        label_rows = [r for r in label_rows if r[0] in alive]
    for _, label, split, _ in label_rows:
        per = summary.counts.setdefault(label, {})
        per[split or ""] = per.get(split or "", 0) + 1
    summary.counts = dict(sorted(summary.counts.items()))
    summary.failed.sort(key=lambda f: f["path"])
    return summary


def label_counts(store: Store) -> dict[str, dict[str, int]]:
    """{label: {split or "": count}} of the index's labelled images."""
    return dict(sorted(store.label_counts().items()))


def labelled_vectors(store: Store) -> LabelledSet:
    """The labelled images that have vectors: ids, unit vectors, labels, splits, paths."""
    info = store.info()
    dim = info.dim if info is not None else 0
    labels = store.user_labels()
    if not labels:
        return LabelledSet(
            np.zeros(0, np.int64), np.zeros((0, dim), np.float32), np.array([], dtype=str), np.array([], dtype=str), []
        )
    by_id = {i: (label, split) for i, label, split, _ in labels}
    ids, X, _ = store.vectors(list(by_id), dim=dim)
    recs = store.images(ids)
    y = np.array([by_id[int(i)][0] for i in ids], dtype=str)
    split = np.array([by_id[int(i)][1] or "" for i in ids], dtype=str)
    return LabelledSet(ids, np.ascontiguousarray(X, np.float32), y, split, [recs[int(i)].path for i in ids])


def unlabelled_ids(store: Store) -> np.ndarray:
    """Ids of embedded images that carry no user label, ascending."""
    labelled = {i for i, *_ in store.user_labels()}
    ids = store.vector_ids()
    return ids[~np.isin(ids, np.fromiter(labelled, np.int64, len(labelled)))] if labelled else ids


# -- what a classifier can learn from them, and how it is evaluated ----------------------
def check_labels(ls: LabelledSet) -> None:
    """Refuse label sets that cannot train or be evaluated, with a message that says what to do."""
    if len(ls) == 0:
        raise NoLabelsError("No labelled images in the index; run `vecsearch teach DIR` (one sub-folder per class) first.")
    classes, counts = np.unique(ls.y, return_counts=True)
    if len(classes) < 2:
        n = int(counts[0])
        raise BadLabelsError(
            f"Only one class ({str(classes[0])!r}, {n} image{'s' if n != 1 else ''}) is labelled; "
            "a classifier needs at least 2. Label images of another class with `vecsearch teach`."
        )
    if ls.has_split():
        train = ls.split != "test"
        tr_classes = set(ls.y[train].tolist())
        if len(tr_classes) < 2:
            raise BadLabelsError("The training part (images not in test/) has fewer than 2 classes.")
        unseen = sorted(set(ls.y[~train].tolist()) - tr_classes)
        if unseen:
            raise BadLabelsError(f"Class(es) {', '.join(unseen)} appear only in the test split; add training images for them.")
        return
    single = [str(c) for c, n in zip(classes, counts, strict=False) if n < 2]
    if single:
        raise BadLabelsError(
            f"Class(es) {', '.join(single)} have a single image; a stratified evaluation needs at least 2 "
            "per class. Label more images, or give a test/ split."
        )


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


MAX_LABEL = 200
"""Longest class name one image can be given by `set_label` (teach's folders and CSVs are not capped)."""


def set_label(store: Store, image_id: int, label: str, split: str | None = None) -> dict:
    """Give one indexed image (with a vector) a class of the user's own, as `teach` stores them
    (source "api"); {"id", "label", "split"}."""
    label = str(label).strip()
    if not label or len(label) > MAX_LABEL or not label.isprintable():
        raise VecsearchError(f"A label must be 1 to {MAX_LABEL} printable characters, got {label[:MAX_LABEL]!r}.")
    if split is not None and split not in SPLITS:
        raise VecsearchError(f"split must be train, test or none, got {split!r}.")
    rec = store.image(int(image_id))
    if rec is None or rec.status != "ok":
        why = f" (it failed: {rec.reason})" if rec is not None and rec.reason else ""
        raise NotIndexedError(f"No indexed image with id {image_id}{why}.")
    if not store.set_user_labels([(rec.id, label, split, "api")]):
        raise NotIndexedError(f"No indexed image with id {image_id} (it was removed meanwhile).")
    return {"id": rec.id, "label": label, "split": split}


def clear_label(store: Store, image_id: int) -> dict:
    """Forget one image's class of the user's own (none is fine); {"id", "label": None}."""
    if store.image(int(image_id)) is None:
        raise NotIndexedError(f"No indexed image with id {image_id}.")
    store.clear_user_labels([int(image_id)])
    return {"id": int(image_id), "label": None}
