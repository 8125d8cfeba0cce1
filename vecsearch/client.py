"""`Client`: a served index over HTTP, with the index object's method names and return types.

Code written against `open_index(...)` runs against `vecsearch serve` by swapping the object:
`search`, `search_vector`, `similar`, `embed`, `embed_bytes`, `image`, `images`, `stats`,
`classifiers`, `classify`, `add`, `add_bytes`, `remove_ids`, `set_label`, `clear_label`,
`train_classifier` answer as `VecIndex`'s do, and the server's errors come back as the library's
own exceptions (a 404 is `NotIndexedError`, a busy server `ServiceBusyError` with its
`retry_after`). Files are read on the client and uploaded; folders are walked here, as `add` does.
Needs `httpx` (the `client` extra).
"""

from __future__ import annotations

import io
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Unpack

import numpy as np

from . import errors
from .classifiers import Classification
from .config import DEFAULT_K, MAX_FILES
from .errors import BadImageError, VecsearchError
from .extras import require_extra
from .files import read_file
from .images import iter_image_files
from .indexer import FailedImage, IndexSummary, RemoveSummary
from .search import Hit, SearchFilters
from .store import ImageRecord

API = "/api/v1"
NPY = "application/x-npy"


class Client:
    """One server (`url`, e.g. http://127.0.0.1:8000) and its token (the read token reads; writes need the admin one).

    `transport` is httpx's (tests pass an ASGI one); `timeout` in seconds, per request.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0, transport: Any = None):
        require_extra("client", needed_for="The HTTP client")
        import httpx

        # The server starts no model call for a request past the time its client waits.
        headers = {"X-Request-Timeout": f"{timeout:g}"} | ({"Authorization": f"Bearer {token}"} if token else {})
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url + API, headers=headers, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"<vecsearch.Client {self.url!r}>"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            raise error_from(r)
        return r

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    # -- service --------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/health")

    def stats(self) -> dict:
        return self._json("GET", "/stats")

    def __len__(self) -> int:
        return int(self.health()["vectors"])

    # -- search ---------------------------------------------------------------------------------
    def search(self, query: Any, k: int = DEFAULT_K, **filters: Unpack[SearchFilters]) -> list[Hit]:
        """The k most similar indexed images to a query: an image file path, image bytes or a vector.

        A file is uploaded (the server does not see your disk, so an indexed file is found among
        its own results, unlike `VecIndex.search`)."""
        if isinstance(query, np.ndarray) or (isinstance(query, (list, tuple)) and query and not isinstance(query[0], str)):
            return self.search_vector(np.asarray(query, np.float32), k, **filters)
        name, data = _upload(query)
        body = self._json("POST", "/search", params=_params(k, filters), files=[("file", (name, data))])
        return hits_from(body)

    def search_vector(self, q: np.ndarray, k: int = DEFAULT_K, **filters: Unpack[SearchFilters]) -> list[Hit]:
        """The k indexed images nearest a vector (any length: cosine), best first; no model call on the server."""
        body = self._json("POST", "/search/vector", params=_params(k, filters), json={"vector": _floats(q)})
        return hits_from(body)

    def search_vectors(self, qs: np.ndarray, k: int = DEFAULT_K, **filters: Unpack[SearchFilters]) -> list[list[Hit]]:
        """One result list per row of `qs`, in one request a MAX_FILES rows at a time."""
        qs = np.asarray(qs, np.float32).reshape(len(qs), -1)
        out: list[list[Hit]] = []
        for start in range(0, len(qs), MAX_FILES):
            rows = [_floats(q) for q in qs[start : start + MAX_FILES]]
            body = self._json("POST", "/search/vector", params=_params(k, filters), json={"vectors": rows})
            out.extend(hits_from(s) for s in body["searches"])
        return out

    def search_text(self, text: str, k: int = DEFAULT_K, **filters: Unpack[SearchFilters]) -> list[Hit]:
        """The k indexed images that best match words, by the server's text tower (a CLIP or SigLIP index)."""
        return hits_from(self._json("POST", "/search/text", params=_params(k, filters), json={"text": text}))

    def similar(self, image_id: int, k: int = DEFAULT_K, **filters: Unpack[SearchFilters]) -> list[Hit]:
        return hits_from(self._json("GET", f"/images/{int(image_id)}/similar", params=_params(k, filters)))

    # -- embeddings -----------------------------------------------------------------------------
    def embed(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Unit vectors (n, dim) of image files, embedded by the server's model; a bad file raises BadImageError."""
        out = [self._embed_chunk(chunk) for chunk in _chunks((_upload(p) for p in paths), MAX_FILES)]
        return np.concatenate(out) if out else np.zeros((0, int(self.stats()["dim"])), np.float32)

    def embed_bytes(self, data: bytes) -> np.ndarray:
        """Unit vector of an image given as bytes."""
        return self._embed_chunk([("upload", data)])[0]

    def _embed_chunk(self, items: list[tuple[str, bytes]]) -> np.ndarray:
        r = self._call("POST", "/embed", params={"format": "npy"}, files=[("file", item) for item in items])
        rows = [int(i) for i in r.headers.get("x-vecsearch-rows", "").split(",") if i]
        if len(rows) < len(items):
            bad = next(i for i in range(len(items)) if i not in rows)
            reason = self._json("POST", "/embed", files=[("file", items[bad])])["items"][0].get("error", "cannot be read")
            raise BadImageError(reason.removeprefix("Bad image: "), path=items[bad][0])
        return np.load(io.BytesIO(r.content), allow_pickle=False)

    # -- images ---------------------------------------------------------------------------------
    def image(self, image_id: int) -> ImageRecord:
        return record_from(self._json("GET", f"/images/{int(image_id)}"))

    def images(self, offset: int = 0, limit: int = 100, status: str | None = None) -> tuple[int, list[ImageRecord]]:
        params: dict[str, Any] = {"offset": offset, "limit": limit} | ({"status": status} if status else {})
        body = self._json("GET", "/images", params=params)
        return int(body["total"]), [record_from(d) for d in body["items"]]

    # -- classifiers ----------------------------------------------------------------------------
    def classifiers(self) -> list[dict]:
        return list(self._json("GET", "/classifiers")["items"])

    def classify(self, query: Any, *, name: str | None = None, top: int = 5) -> Classification:
        """Classify an image file or image bytes with a saved classifier (default: the newest)."""
        filename, data = _upload(query)
        params = {"top": top} | ({"classifier": name} if name else {})
        return Classification(**self._json("POST", "/classify", params=params, files=[("file", (filename, data))]))

    # -- writes (the admin token) ---------------------------------------------------------------
    def add(self, paths: Iterable[str | os.PathLike]) -> IndexSummary:
        """Upload image files (folders are walked here) into the server's index, MAX_FILES a request.

        The same bytes twice are one image: a duplicate counts as `unchanged`."""
        summary = IndexSummary()
        for chunk in _chunks(((str(p), read_file(p)) for p in iter_image_files(paths)), MAX_FILES):
            for item in self.add_bytes(chunk):
                summary.total += 1
                if item["status"] == "indexed":
                    summary.indexed += 1
                elif item["status"] == "duplicate":
                    summary.unchanged += 1
                else:
                    summary.failed.append(FailedImage(item["name"], item.get("reason") or "failed"))
        return summary

    def add_bytes(self, items: Iterable[tuple[str, bytes]]) -> list[dict]:
        """Upload (name, bytes) pairs: one {"name", "status", "id", ...} each, as `VecIndex.add_bytes`."""
        files = [("file", (os.path.basename(name) or "upload", data)) for name, data in items]
        return list(self._json("POST", "/images", files=files)["items"])

    def remove_ids(self, ids: Iterable[int]) -> RemoveSummary:
        """Drop images by id, one request each (an unknown id raises NotIndexedError; those before it are gone)."""
        summary = RemoveSummary()
        for image_id in ids:
            body = self._json("DELETE", f"/images/{int(image_id)}")
            summary.removed += 1
            summary.removed_paths.append(str(body.get("path")))
            if body.get("deleted_file"):
                summary.deleted_files.append(str(body.get("path")))
        return summary

    def set_label(self, image_id: int, label: str, split: str | None = None) -> dict:
        return dict(self._json("PUT", f"/images/{int(image_id)}/label", json={"label": label, "split": split}))

    def clear_label(self, image_id: int) -> dict:
        return dict(self._json("DELETE", f"/images/{int(image_id)}/label"))

    def train_classifier(self, kind: str, *, k: int = 5, name: str | None = None) -> dict:
        """Train a k-NN or probe classifier on the server from its labels; the result as `TrainResult.to_dict()`."""
        return dict(self._json("POST", "/classifiers", json={"kind": kind, "k": k, "name": name}))


# -- what travels ---------------------------------------------------------------------------------
def _params(k: int, filters: Mapping[str, Any]) -> dict:
    from .search import check_filters

    check_filters("search", k, filters)  # a misspelt filter is a TypeError here too, before a request
    return {"k": k, **{key: str(v) for key, v in filters.items()}}  # the filters' names are the query parameters


def _floats(q: np.ndarray) -> list[float]:
    q = np.asarray(q, np.float32).reshape(-1)
    return [float(x) for x in q]  # NaN stays NaN: the server says which vector is bad


def _upload(query: Any) -> tuple[str, bytes]:
    if isinstance(query, (bytes, bytearray, memoryview)):
        return "upload", bytes(query)
    if isinstance(query, (str, os.PathLike)):
        return Path(query).name, read_file(query)
    if hasattr(query, "save"):  # a PIL image, sent losslessly
        buf = io.BytesIO()
        query.save(buf, "PNG")
        return "image.png", buf.getvalue()
    raise VecsearchError(f"Cannot send {type(query).__name__} as an image: give a file path, image bytes or a vector.")


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def hits_from(body: dict) -> list[Hit]:
    return [Hit(rank=h["rank"], id=h["id"], path=h["path"], score=h["score"]) for h in body["results"]]


def record_from(d: dict) -> ImageRecord:
    at = datetime.fromisoformat(d["indexed_at"].removesuffix("Z"))
    return ImageRecord(
        d["id"], d["path"], d["size"], d["mtime_ns"], d["sha256"], d["width"], d["height"], d["status"], d["reason"], at
    )


def error_from(r: Any) -> VecsearchError:
    """The library's exception for an error response: the class its body names, when the library has one."""
    try:
        body = r.json()
    except ValueError:
        body = {}
    message = str(body.get("error") or f"HTTP {r.status_code}")
    kind = getattr(errors, str(body.get("type") or ""), None)
    if r.status_code == 503 and "retry-after" in r.headers:
        return errors.ServiceBusyError(message, retry_after=float(r.headers["retry-after"]))
    if kind is errors.BadImageError:
        return errors.BadImageError(message.removeprefix("Bad image: "))
    if isinstance(kind, type) and issubclass(kind, VecsearchError) and kind is not errors.ServiceBusyError:
        try:
            e = kind(message)
        except TypeError:
            e = VecsearchError(message)
    elif r.status_code == 404:
        e = errors.NotIndexedError(message)
    else:
        e = VecsearchError(message)
    e.status = r.status_code  # type: ignore[attr-defined]
    return e
