"""Images sent as bytes (HTTP uploads) written into an index: checked, stored, embedded, committed.

Each upload is decoded and checked (the pixel cap, the decoder's reasons) before anything is
written. A good one is stored content-addressed inside the index folder,
`uploads/<sha[:2]>/<sha256>.<ext>` (the extension from the decoded format, never the client's
name, which is only echoed back as text), through a temp file that is fsynced, renamed and its
folder fsynced; then it is indexed like any file, at that path.

Concurrent uploads share commits: `GroupCommit` gathers what request threads hand it while one
commit runs, and the next commit takes them all (one writer lock, one model call, one SQLite
transaction for many uploads). A crash before a commit leaves at most stored copies that no
row points at (the same bytes sent again reuse them); never a row without its file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import files, images
from .config import default_workers
from .errors import BadImageError, NotIndexedError
from .store import ImageRecord, Store
from .vectors import normalize, norms

log = logging.getLogger(__name__)

UPLOADS_DIRNAME = "uploads"
LOCK_WAIT = 5.0
"""Seconds a write waits for the writer lock another process (a CLI `index`) holds before it is
refused as busy: long enough to ride out one chunk commit, short enough for an HTTP client."""
MAX_NAME = 255
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif", "JPEG2000": "jp2"}


@dataclass
class Upload:
    """One image given as bytes, decoded: `pixels` at the model's input size, or the `reason` it failed."""

    name: str
    data: bytes = field(repr=False)
    sha256: str | None = None
    ext: str | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)
    width: int | None = None
    height: int | None = None
    reason: str | None = None

    def item(self, status: str, image_id: int | None = None, path: str | None = None) -> dict:
        """The per-file answer: name, status (indexed, duplicate, failed), id, sha256, path, reason."""
        return {"name": self.name, "status": status, "id": image_id, "sha256": self.sha256, "path": path, "reason": self.reason}


def display_name(name: str | None) -> str:
    """The client's file name as text only: its last part, no control characters, at most MAX_NAME."""
    base = str(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in base if c.isprintable())[:MAX_NAME]


def extension(fmt: str | None) -> str:
    """The file extension the decoded format is stored under."""
    if not fmt:
        return "img"
    return _EXTENSIONS.get(fmt, "".join(c for c in fmt.lower() if c.isalnum())[:8] or "img")


def decode(name: str | None, data: bytes, size: tuple[int, int], max_pixels: int | None, resample: str) -> Upload:
    """Decode one upload at the model's input size as indexing does; a bad one carries its reason."""
    up = Upload(display_name(name), data)
    try:
        up.pixels, up.width, up.height = images.decode_image(data, size, max_pixels=max_pixels, resample=resample)
    except BadImageError as e:
        up.reason = e.reason
        return up
    up.sha256 = hashlib.sha256(data).hexdigest()
    up.ext = extension(images.image_format(data))
    return up


def decode_all(
    items: Iterable[tuple[str | None, bytes]], size: tuple[int, int], max_pixels: int | None, resample: str
) -> list[Upload]:
    """Decode every upload (in threads when several: Pillow releases the GIL), in order."""
    items = list(items)
    if len(items) <= 1:
        return [decode(n, d, size, max_pixels, resample) for n, d in items]
    with ThreadPoolExecutor(min(len(items), default_workers()), thread_name_prefix="vecsearch-upload") as pool:
        return list(pool.map(lambda it: decode(it[0], it[1], size, max_pixels, resample), items))


def stored_path(directory: Path, sha256: str, ext: str) -> Path:
    """Where an upload of this content lives: absolute, as every path an index records."""
    return files.absolute(directory) / UPLOADS_DIRNAME / sha256[:2] / f"{sha256}.{ext}"


def _mkdir_durable(folder: Path) -> None:
    """Create `folder` (and uploads/ above it) so that its entry survives a crash."""
    for d in (folder.parent, folder):
        if not d.is_dir():
            d.mkdir(exist_ok=True)
            files.fsync_dir(d.parent)


def save(directory: Path, up: Upload) -> Path:
    """Store an upload's bytes at its content address, durably; an existing complete copy is kept."""
    assert up.sha256 is not None and up.ext is not None, "only decoded uploads are stored"
    path = stored_path(directory, up.sha256, up.ext)
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size == len(up.data):
            return path  # the same bytes from an earlier upload (a rename is all or nothing)
    except FileNotFoundError:
        pass
    _mkdir_durable(path.parent)
    files.atomic_write(path, lambda tmp: tmp.write_bytes(up.data))
    return path


def commit(directory: Path, store: Store, pooled: Callable[[np.ndarray], np.ndarray], batch: list[Upload]) -> list[dict]:
    """Store, embed and index decoded uploads in one transaction; the caller holds the writer lock.

    The same content already indexed (an earlier upload, or a file indexed from a folder) is a
    duplicate with that image's id; the same content twice in one batch is indexed once.
    Vectors come from `pooled` (the model's raw pooled features), stored unit length with the raw
    length beside them, as the indexer stores them: `label` gives uploads their ImageNet top too.
    """
    good = [(u.sha256 or "", u) for u in batch if u.reason is None]
    known = store.ok_ids_by_sha([h for h, _ in good])
    new: dict[str, Upload] = {}
    for h, u in good:
        if h not in known:
            new.setdefault(h, u)
    added: dict[str, tuple[int, str]] = {}
    if new:
        todo = list(new.values())
        raw = pooled(np.stack([u.pixels for u in todo if u.pixels is not None]))
        vectors, lengths = normalize(raw), norms(raw)
        rows = [_row(save(directory, u), u, vec, float(n)) for u, vec, n in zip(todo, vectors, lengths, strict=True)]
        changed = store.apply(upserts=rows)["set"]
        added = {h: (i, r["path"]) for h, i, r in zip(new, changed, rows, strict=True)}
    paths = {i: r.path for i, r in store.images(known.values()).items()} if known else {}
    out = []
    for u in batch:
        h = u.sha256 or ""
        if u.reason is not None:
            out.append(u.item("failed"))
        elif h in known:
            out.append(u.item("duplicate", known[h], paths.get(known[h])))
        else:
            out.append(u.item("indexed" if new[h] is u else "duplicate", *added[h]))
    return out


def _row(path: Path, u: Upload, vector: np.ndarray, norm: float) -> dict:
    """The image row of a stored upload, as the indexer writes one."""
    st = path.stat()
    return {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": u.sha256,
        "width": u.width,
        "height": u.height,
        "status": "ok",
        "reason": None,
        "vector": vector,
        "norm": norm,
    }


def records_for(store: Store, ids: Iterable[int]) -> list[ImageRecord]:
    """The records of these ids, by id; NotIndexedError (before anything changes) if one is unknown."""
    wanted = sorted({int(i) for i in ids})
    found = store.images(wanted)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise NotIndexedError(f"No indexed image with id {', '.join(map(str, missing))}.")
    return [found[i] for i in wanted]


def is_upload(directory: Path, path: str) -> bool:
    """True when `path` is a stored upload of this index: a regular file directly in uploads/<xx>/."""
    uploads = (directory / UPLOADS_DIRNAME).resolve()
    p = Path(path)
    try:
        parent = p.parent.resolve(strict=True)
        st = os.lstat(p)
    except OSError:
        return False
    return parent.parent == uploads and len(parent.name) == 2 and p.name.startswith(parent.name) and stat.S_ISREG(st.st_mode)


def delete_copies(directory: Path, records: Iterable[ImageRecord]) -> list[str]:
    """Delete the stored upload copies of removed records (after the commit that dropped them);
    files anywhere else are never touched. The paths deleted."""
    deleted = []
    for r in records:
        if is_upload(directory, r.path):
            try:
                os.unlink(r.path)
                deleted.append(r.path)
            except OSError as e:  # a copy left behind is harmless: the same bytes sent again reuse it
                log.warning("cannot delete the stored upload %s: %s", r.path, e)
    return sorted(deleted)


class GroupCommit:
    """Many request threads' writes, one commit at a time: a thread hands in its items and waits;
    the thread that gets the turn commits everything handed in so far (`run(all items)` returns
    one result per item, in order) and answers every waiter. An error answers the whole group."""

    def __init__(self, run: Callable[[list], list]):
        self._run = run
        self._mutex = threading.Lock()
        self._turn = threading.Lock()
        self._pending: list[_Ticket] = []

    def submit(self, items: list) -> list:
        ticket = _Ticket(items)
        with self._mutex:
            self._pending.append(ticket)
        with self._turn:  # while one commit runs, the next group gathers here
            if not ticket.done:
                with self._mutex:
                    group, self._pending = self._pending, []
                self._commit(group)
        if ticket.error is not None:
            raise ticket.error
        return ticket.results

    def _commit(self, group: list[_Ticket]) -> None:
        try:
            results = self._run([item for t in group for item in t.items])
        except BaseException as e:  # noqa: BLE001 -- every waiter of the group gets it
            for t in group:
                t.error, t.done = e, True
            return
        start = 0
        for t in group:
            t.results, t.done = results[start : start + len(t.items)], True
            start += len(t.items)


@dataclass
class _Ticket:
    items: list
    results: list = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False
