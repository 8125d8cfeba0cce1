"""What `stats` reports about an index: counts, the model, the search structure and sizes on disk,
in one dict the CLI prints and the server returns."""

from __future__ import annotations

from pathlib import Path

from .backbones import WeightsSpec, recorded_precision
from .config import DB_NAME, VECTORS_NAME
from .search import LiveSearch, sidecar_path
from .store import Store
from .store.models import IndexInfo


def _size(p: Path) -> int:
    return p.stat().st_size if p.exists() else 0


def stats(directory: Path, store: Store, info: IndexInfo, live: LiveSearch, exclude: list[str]) -> dict:
    """Counts, model, index_type and sizes on disk.

    `vectors_bytes` is the stored vectors (the shard files under `vectors/`), whatever the
    index type; `structure_bytes` the approximate search structure built from them
    (`vectors.faiss` and its sidecar; 0 for flat, which scans the shards).
    """
    counts = store.counts()
    searcher = live.searcher
    assert searcher is not None, "an index with info has a searcher once refreshed"
    spec, faiss = searcher.spec, live.faiss
    db, structure = directory / DB_NAME, directory / VECTORS_NAME
    out = {
        "index": str(directory),
        "images": counts["images"],
        "vectors": len(searcher),
        "ok": counts["ok"],
        "failed": counts["failed"],
        "backbone": info.backbone,
        "weights": WeightsSpec.recorded(info).describe(),
        "weights_fingerprint": info.weights_fingerprint,
        "precision": recorded_precision(info),
        "dim": info.dim,
        "metric": info.metric,
        "index_type": info.index_type,
        "faiss_index": faiss.describe() if faiss is not None else "none (exact scan of the stored vectors)",
        "index_params": spec.params,
        "index_memory_bytes": spec.memory_bytes,
        "index_built_for": spec.built_for,
        "recall_at_10": spec.recall,
        "max_memory": info.max_memory,
        "db_bytes": _size(db) + _size(db.with_name(db.name + "-wal")),
        "vectors_bytes": store.shards.disk_bytes(),
        "structure_bytes": _size(structure) + _size(sidecar_path(structure)),
        "created_at": info.created_at.isoformat(timespec="seconds") + "Z",
        "exclude": exclude,
    }
    return out | ({"index_warning": searcher.note} if searcher.note else {})
