"""The store's face: what the rest of vecsearch imports from `vecsearch.store`.

The repository itself (`Store`, every query) lives in `store.py`; the SQLite file in
`database.py`, the vectors' shard files in `shards.py`, the tables in `models.py`.
"""

from __future__ import annotations

from .database import migrations_dir
from .store import ImageRecord, Importer, Store, no_annotations, open_folder

__all__ = ["Store", "ImageRecord", "Importer", "no_annotations", "migrations_dir", "open_folder"]
