"""The search wing: what an index searches with, and how it stays current.

`index_types` (which structure, under what budget), `structure` (the FAISS wrapper and its
file), `exact` (exact top-k: a scan, or re-ranking a structure's candidates; tuning),
`filters` (what a search may return) and `live` (the searcher an open index publishes,
refreshes and rebuilds). The rest of the package imports from here.
"""

from __future__ import annotations

from .exact import Searcher, SlotMap
from .filters import FILTER_NAMES, SearchFilters, allowed_ids, check_filters, check_limits
from .index_types import DEFAULT_TYPE, NAMED_TYPES, IndexSpec, check_index_type, format_bytes, parse_memory
from .live import Hit, LiveSearch, check_query
from .structure import FaissIndex, check_file, sidecar_path

__all__ = [
    "DEFAULT_TYPE",
    "FILTER_NAMES",
    "NAMED_TYPES",
    "FaissIndex",
    "Hit",
    "IndexSpec",
    "LiveSearch",
    "SearchFilters",
    "Searcher",
    "SlotMap",
    "allowed_ids",
    "check_file",
    "check_query",
    "check_filters",
    "check_index_type",
    "check_limits",
    "format_bytes",
    "parse_memory",
    "sidecar_path",
]
