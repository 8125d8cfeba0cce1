"""The search wing: what an index searches with, and how it stays current.

`index_types` (which structure, under what budget), `structure` (the FAISS wrapper and its
file), `exact` (exact top-k: a scan, or re-ranking a structure's candidates; tuning),
`filters` (what a search may return) and `live` (the searcher an open index publishes,
refreshes and rebuilds). The rest of the package imports from here.
"""

from __future__ import annotations

from .exact import RWLock, Searcher, SlotMap, recall_at, tune
from .filters import allowed_ids, check_limits
from .index_types import (DEFAULT_MAX_MEMORY, DEFAULT_TYPE, NAMED_TYPES, TARGET_RECALL, IndexSpec, check_index_type,
                          choose, estimate_bytes, format_bytes, parse_memory)
from .live import Hit, LiveSearch, current_spec, structure_for
from .structure import FaissIndex, check_file, sidecar_path, training_minimum

__all__ = [
    "DEFAULT_MAX_MEMORY", "DEFAULT_TYPE", "NAMED_TYPES", "TARGET_RECALL", "FaissIndex", "Hit", "IndexSpec",
    "LiveSearch", "RWLock", "Searcher", "SlotMap", "allowed_ids", "check_file", "check_index_type", "check_limits",
    "choose", "current_spec", "estimate_bytes", "format_bytes", "parse_memory", "recall_at", "sidecar_path",
    "structure_for", "training_minimum", "tune",
]
