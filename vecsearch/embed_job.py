"""Embedding a very large job into Parquet shards, no index involved (`vecsearch embed --out DIR`).

The inference half of clip-retrieval's inference -> index split: workers (in this process,
or a Ray cluster) turn files into vectors, the driver writes them as shards, and
`vecsearch import DIR` loads them later, so a 100M-image job never funnels through one
index writer. The files found are sorted by path and cut into shards of `shard_size`;
each shard is named by its number and a hash of its files' paths, sizes and mtimes, and
written atomically. A re-run (after a crash, or with more files) keeps every shard whose
name is still current, writes the missing ones, and deletes shards of an older listing.
`manifest.json` records the model and the folders given: one job a folder, so shards of
two models, or of two jobs, never mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

from . import images, vector_files
from .config import VERSION
from .errors import IndexMismatchError, NoImagesError, VecsearchError
from .extract import Embedded
from .files import atomic_write

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
SHARD_SIZE = 20_000
"""Files per shard: ~160 MB of 2048-d float32 vectors, held here until the shard is written;
a crash redoes at most one shard."""
MANIFEST = "manifest.json"
_SHARD_NAME = re.compile(r"^shard-\d{5,}-[0-9a-f]{12}\.parquet$")
_SHARD_TEMP = re.compile(r"^\.shard-\d{5,}-[0-9a-f]{12}\.parquet\..+\.tmp$")  # left by a killed run


class Embedder(Protocol):
    def embed_files(self, paths: Iterable[Path]) -> Iterator[Embedded]: ...


@dataclass
class EmbedSummary:
    """What one `embed --out` run did."""

    out: str
    files: int = 0  # everything found, failed ones included
    shards: int = 0
    written: int = 0  # shards written by this run
    kept: int = 0  # shards already complete from an earlier run
    removed: int = 0  # shards of an older listing, deleted
    embedded: int = 0
    failed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Shard:
    name: str
    entries: list[images.Found]  # sorted by path
    stats: dict[str, tuple[int, int]]  # path -> (size, mtime_ns)


def _stat(path: Path, follow: bool) -> tuple[int, int]:
    try:
        st = path.stat() if follow else os.lstat(path)
    except OSError:
        return 0, 0  # the reader reports why
    return st.st_size, st.st_mtime_ns


def plan_shards(found: list[images.Found], shard_size: int) -> list[_Shard]:
    """Cut the sorted listing into shards named by number and a hash of what they hold."""
    found = sorted(found, key=lambda f: str(f.path))
    shards = []
    for n, start in enumerate(range(0, len(found), shard_size)):
        entries = found[start : start + shard_size]
        h = hashlib.sha256()
        stats = {}
        for f in entries:
            stats[str(f.path)] = size_mtime = _stat(f.path, follow=f.reason is None)
            h.update(f"{f.path}\0{size_mtime[0]}\0{size_mtime[1]}\0{f.reason or ''}\n".encode("utf-8", "surrogateescape"))
        shards.append(_Shard(f"shard-{n:05d}-{h.hexdigest()[:12]}.parquet", entries, stats))
    return shards


MODEL_KEYS = ("backbone", "weights_kind", "weights_seed", "weights_path", "precision")
"""What a job asks for, known before its model is built (the fingerprint is known only after)."""


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VecsearchError(
            f"{path} is unreadable ({e}); move the folder away or give another output folder.", option="out"
        ) from e
    if not isinstance(old, dict):
        raise VecsearchError(
            f"{path} is not an embed manifest; move the folder away or give another output folder.", option="out"
        )
    return old


def _same_job(old: dict | None, asked: dict | None, roots: list[Path]) -> bool:
    """Whether the manifest there is of this very job as asked (model by name, weights and precision; folders)."""
    if old is None or asked is None or old.get("roots") != sorted(str(r) for r in roots):
        return False
    if asked.get("weights_kind") == "file":  # the file may have changed since: only its fingerprint tells
        return False
    model = {"precision": "float32"} | (old.get("model") or {})  # manifests before 0.3 name no precision
    return all(model.get(k) == asked.get(k) for k in MODEL_KEYS)


def _check_manifest(out: Path, old: dict | None, meta: dict, roots: list[Path], shard_size: int) -> None:
    """Write the manifest, or check that the one there (`old`) is of the same job: model and folders.

    Another job's shards would collide by number, and a re-run deletes shards it does not
    expect; so one folder holds one job.
    """
    given = sorted(str(r) for r in roots)
    path = out / MANIFEST
    if old is not None:
        got = (old.get("model") or {}).get("weights_fingerprint")
        if got != meta["weights_fingerprint"]:
            raise IndexMismatchError(
                f"{out} holds shards of another model ({(old.get('model') or {}).get('backbone')}, weights fingerprint "
                f"{str(got)[:12]}...) than this one ({meta['backbone']}); give another --out folder."
            )
        if old.get("roots") is not None and old["roots"] != given:
            raise VecsearchError(
                f"{out} holds the shards of another job ({', '.join(old['roots'])}); give each job its own --out "
                "folder (`import` takes a folder of them all)."
            )
    atomic_write(
        path,
        lambda tmp: tmp.write_text(
            json.dumps({"vecsearch": VERSION, "model": meta, "roots": given, "shard_size": shard_size}, indent=2) + "\n"
        ),
    )


def write_shards(
    roots: list[Path],
    out: Path,
    model: Callable[[], dict],
    embedder: Callable[[], Embedder],
    *,
    asked: dict | None = None,
    shard_size: int = SHARD_SIZE,
    progress: Progress | None = None,
) -> EmbedSummary:
    """Embed every image file under `roots` into Parquet shards in `out`, resuming shard by shard.

    `model()` builds the model and returns its meta (as `export` records it); `embedder()`
    is called after it, only when a shard is missing, and must yield one `Embedded` per
    path, in input order or not. `asked` (MODEL_KEYS: what the job asks for) lets a re-run
    whose shards are all current, for the same model by name and folders, finish without
    building the model at all.
    """
    started = time.perf_counter()
    if shard_size < 1:
        raise VecsearchError(f"shard_size must be at least 1, got {shard_size}.", option="shard_size")
    if out.exists() and not out.is_dir():
        raise VecsearchError(f"{out} is a file; the output is a folder (new, or one `embed` wrote).", option="out")
    found = list(images.scan(roots))
    if not found:
        raise NoImagesError(f"No image files found in {', '.join(map(str, roots))}.")
    vector_files.check_parquet()
    shards = plan_shards(found, shard_size)
    current = {s.name for s in shards}
    summary = EmbedSummary(out=str(out), files=len(found), shards=len(shards))
    old = _read_manifest(out) if out.is_dir() else None
    if (
        _same_job(old, asked, roots)
        and all((out / name).is_file() for name in current)
        and not any(_SHARD_NAME.match(f.name) and f.name not in current for f in out.iterdir())
    ):
        summary.kept = len(shards)  # nothing to write nor remove: the model is not needed
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary
    meta = model()
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, old, meta, roots, shard_size)
    for f in out.iterdir():
        if _SHARD_NAME.match(f.name) and f.name not in current:
            log.info("removing %s: its files changed since it was written", f)
            f.unlink()
            summary.removed += 1
        elif _SHARD_TEMP.match(f.name):
            f.unlink()
    todo = [s for s in shards if not (out / s.name).is_file()]
    summary.kept = len(shards) - len(todo)
    total = sum(1 for s in todo for f in s.entries if f.reason is None)
    if progress:
        progress(0, total)
    # Rows wait here until their shard is whole; with input-order results that is one shard.
    rows: dict[int, list[dict]] = {}
    missing: dict[int, int] = {}
    shard_of: dict[str, int] = {}
    for i, s in enumerate(todo):
        rows[i] = [_row(str(f.path), s.stats[str(f.path)], reason=f.reason) for f in s.entries if f.reason is not None]
        missing[i] = sum(1 for f in s.entries if f.reason is None)
        shard_of.update((str(f.path), i) for f in s.entries if f.reason is None)

    def finish(i: int) -> None:
        dim = int(meta["dim"])
        vector_files.write_shard(out / todo[i].name, meta, dim, sorted(rows.pop(i), key=lambda r: r["path"]))
        summary.written += 1
        log.info("wrote %s", todo[i].name)

    for i in [i for i, n in missing.items() if n == 0]:
        finish(i)
    done = 0
    if total:
        for item in embedder().embed_files(Path(p) for s in todo for p in (str(f.path) for f in s.entries if f.reason is None)):
            i = shard_of[str(item.path)]
            stat = todo[i].stats[str(item.path)]
            if item.error is None:
                rows[i].append(
                    _row(
                        str(item.path),
                        stat,
                        vector=item.vector,
                        norm=item.norm,
                        sha256=item.sha256,
                        width=item.width,
                        height=item.height,
                    )
                )
                summary.embedded += 1
            else:
                rows[i].append(_row(str(item.path), stat, reason=item.error, sha256=item.sha256 or None))
            missing[i] -= 1
            done += 1
            if missing[i] == 0:
                finish(i)
            if progress:
                progress(done, total)
    if rows:
        raise VecsearchError(f"{len(rows)} shards did not get all their results; run again to finish them.")
    summary.failed = sum(1 for s in todo for f in s.entries if f.reason is not None) + total - summary.embedded
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _row(
    path: str, stat: tuple[int, int], *, vector=None, norm=None, sha256=None, width=None, height=None, reason: str | None = None
) -> dict:
    return {
        "path": path,
        "vector": vector,
        "norm": norm,
        "size": stat[0],
        "mtime_ns": stat[1],
        "sha256": sha256,
        "width": width or None,
        "height": height or None,
        "reason": reason,
    }
