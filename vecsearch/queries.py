"""What a caller passes as a query or an image, turned into one form and then into pixels or a vector.

A query comes as an image file path, image bytes (an upload), a PIL image (encoded
losslessly, so it is decoded exactly as indexing decodes a file), a vector (a numpy array or
a list of numbers) or an indexed image's id. `parse` sorts it into a `Query` for the forms
the caller takes; the functions below it resolve one, reusing a stored vector where an
indexed, unchanged file allows, so search, classification and explanations agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import images, indexer
from .errors import BadImageError, InputNotFoundError, NotIndexedError, VecsearchError
from .files import FileStream, absolute, open_stream, read_bytes
from .model import IndexModel, png_bytes
from .store import ImageRecord, Store
from .vectors import normalize


@dataclass(frozen=True)
class Forms:
    """The query forms one caller takes, and how its refusal names them."""

    kinds: tuple[str, ...]
    give: str


SEARCH = Forms(
    ("vector", "numbers", "bytes", "path", "image"),
    "give an image path (str or Path), a vector (numpy array or list of numbers), image bytes or a PIL image.",
)
"""What search and classify take."""
IMAGE = Forms(("id", "bytes", "path", "image"), "give an image path, image bytes, a PIL image or an indexed image's id.")
"""What an explanation looks at."""
LIKE = Forms(
    ("id", "vector", "bytes", "path", "image"), "give an image path, image bytes, a PIL image, an indexed image's id or a vector."
)
"""What an explanation compares with."""


@dataclass
class Query:
    """One of: a unit `vector`, image `data` (bytes), a `path` as given, or an indexed image's `id`."""

    kind: str  # which form it came in: one of Forms.kinds
    vector: np.ndarray | None = None
    data: bytes | None = None
    path: Path | None = None
    id: int | None = None


def _kind(obj: Any) -> str | None:
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return "id"
    if isinstance(obj, np.ndarray):
        return "vector"
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(obj, (str, os.PathLike)):
        return "path"
    if hasattr(obj, "save") and hasattr(obj, "mode"):  # a PIL image
        return "image"
    if (
        isinstance(obj, (list, tuple))
        and obj
        and all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in obj)
    ):
        return "numbers"
    return None


def parse(obj: Any, forms: Forms, what: str) -> Query:
    """`obj` as a Query, if it is one of `forms`; else VecsearchError saying "Cannot `what` ..."."""
    kind = _kind(obj)
    if kind is None or kind not in forms.kinds:
        also = (
            " (for an indexed image's id, use similar(id))"
            if isinstance(obj, (int, np.integer)) and "id" not in forms.kinds
            else ""
        )
        raise VecsearchError(f"Cannot {what} a {type(obj).__name__}{also}: {forms.give}")
    if kind == "id":
        return Query(kind, id=int(obj))
    if kind == "vector":
        if obj.dtype.kind not in "fiu" or obj.size == 0:
            raise VecsearchError(
                f"Cannot {what} an array of {obj.dtype} with {obj.size} values: a vector is a non-empty array of numbers."
            )
        return Query(kind, vector=normalize(obj.astype(np.float32).reshape(-1)))
    if kind == "numbers":
        return Query(kind, vector=normalize(np.asarray(obj, np.float32)))
    if kind == "bytes":
        return Query(kind, data=bytes(obj))
    if kind == "image":
        return Query(kind, data=png_bytes(obj))
    return Query(kind, path=Path(obj))


# -- stored vectors -----------------------------------------------------------------------------
def record(store: Store, image_id: int) -> ImageRecord:
    """The record of one image (ok or failed), else NotIndexedError."""
    rec = store.image(image_id)
    if rec is None:
        raise NotIndexedError(f"No indexed image with id {image_id}.")
    return rec


def stored_vector(store: Store, image_id: int) -> np.ndarray:
    """The stored unit vector of an indexed image."""
    ids, mat, _ = store.vectors([image_id], dim=store.require_info().dim)
    if not len(ids):
        raise NotIndexedError(f"No indexed image with id {image_id}.")
    return mat[0]


def stored_for(store: Store, path: Path) -> tuple[int | None, np.ndarray | None]:
    """(id, vector) of an indexed file that is unchanged since, else (None, None)."""
    if store.info() is None or not images.storable(path):
        return None, None
    rec = store.image_by_path(str(absolute(path)))
    if rec is not None and rec.status == "ok" and indexer.is_unchanged(rec, path):
        return rec.id, stored_vector(store, rec.id)
    return None, None


def vectors_for(store: Store, model: IndexModel, paths: Iterable[str | os.PathLike]) -> np.ndarray:
    """Unit vectors of image files: an indexed, unchanged file reuses its stored vector."""
    files = [absolute(p) for p in paths]
    for p in files:
        if not os.path.lexists(p):
            raise InputNotFoundError(f"No such file: {p}")
    out: list[np.ndarray | None] = [stored_for(store, p)[1] for p in files]
    todo = [i for i, v in enumerate(out) if v is None]
    if todo:
        for i, vec in zip(todo, model.embed([files[i] for i in todo]), strict=False):
            out[i] = vec
    return np.stack([v for v in out if v is not None]).astype(np.float32)


# -- the three uses ---------------------------------------------------------------------------
def query_vector(store: Store, model: IndexModel, query: Any, what: str) -> tuple[np.ndarray, Path | None, int | None]:
    """(unit vector, file path or None, id of the indexed file whose vector it reuses or None): search, classify."""
    q = parse(query, SEARCH, what)
    if q.vector is not None:
        return q.vector, None, None
    if q.data is not None:
        return model.embed_bytes(q.data), None, None
    assert q.path is not None
    p = absolute(q.path)
    if not os.path.lexists(p):
        raise InputNotFoundError(f"No such file: {p}")
    found, vector = stored_for(store, p)
    return (model.embed([p])[0] if vector is None else vector), p, found


def like_vector(store: Store, model: IndexModel, like: Any) -> tuple[np.ndarray, str]:
    """The unit vector of the image an explanation compares with, and how to name it."""
    q = parse(like, LIKE, "compare with")
    if q.id is not None:
        return stored_vector(store, q.id), f"#{q.id} {record(store, q.id).path}"
    if q.vector is not None:
        return q.vector, "a vector"
    if q.data is not None:
        return model.embed_bytes(q.data), ("the upload" if q.kind == "bytes" else "an image")
    assert q.path is not None
    p = q.path.expanduser()
    return vectors_for(store, model, [p])[0], str(p.resolve())


def image_data(store: Store, image: Any) -> tuple[bytes, str | None]:
    """(bytes, path or None) of an image to look at, given as a path, bytes, a PIL image or an indexed id."""
    q = parse(image, IMAGE, "explain")
    if q.data is not None:
        return q.data, None
    if q.id is not None:
        path = record(store, q.id).path
        return read_bytes(path), path
    assert q.path is not None
    p = q.path.expanduser()
    if not p.is_file():
        raise InputNotFoundError(f"No such file: {p}")
    return read_bytes(p), str(p.resolve())


def original(store: Store, image_id: int, *, max_bytes: int) -> FileStream:
    """The file of an indexed image, opened to be read once, only while it is the file indexed
    (status ok, size and mtime as recorded, bytes Pillow knows as an image)."""
    rec = record(store, image_id)
    if rec.status != "ok":
        raise NotIndexedError(f"Image {image_id} was not indexed: {rec.reason}.")
    try:
        f = open_stream(rec.path, max_bytes=max_bytes)
    except BadImageError as e:
        raise NotIndexedError(f"The file of image {image_id} cannot be read at {rec.path}: {e.reason}.") from None
    if (f.size, f.mtime_ns) != (rec.size, rec.mtime_ns) or f.media_type is None:
        f.close()
        raise NotIndexedError(
            f"The file of image {image_id} at {rec.path} has changed since it was indexed: index its folder again."
        )
    return f


def check_status(status: str | None) -> None:
    """A listing's status filter: None (all), "ok" or "failed"."""
    if status not in (None, "ok", "failed"):
        raise VecsearchError(f"status must be ok or failed, not {status!r}.")
