"""Opening an index folder: `open_index` resolves the folder, opens (and migrates) its store,
checks what was asked for against what the index records, and hands back a `VecIndex`."""

from __future__ import annotations

import os
from typing import Any, Unpack

from .api import Progress, VecIndex
from .backbones import Backbone
from .config import resolve_index_dir
from .model import UNSET, IndexModel, ModelOptions
from .search import check_index_type, parse_memory
from .store import open_folder

_UNSET: Any = UNSET

__all__ = ["open_index"]


def open_index(
    path: str | os.PathLike | None = None,
    *,
    backbone: str | None = None,
    weights: Any = _UNSET,
    seed: int | None = None,
    create: bool = True,
    model: Backbone | None = None,
    index_type: str | None = None,
    max_memory: int | str | None = None,
    progress: Progress | None = None,
    read_only: bool | None = None,
    **options: Unpack[ModelOptions],
) -> VecIndex:
    """Open (or create) the index at `path` (else $VECSEARCH_INDEX, else the default folder).

    backbone/weights choose the model for a new index (weights: "imagenet", None for the
    seeded random init, or a weights file); for an existing one they must match what built
    it, or IndexMismatchError is raised. `model` passes an already built Backbone.

    index_type picks the search structure (`index_types`): "flat" (exact, the default),
    "hnsw", "ivf-pq", "auto" (chosen from the collection's size and `max_memory`, e.g.
    "4GB") or a FAISS factory string. Giving another type or budget than an index records
    converts it: the structure is built from the stored vectors (`progress` reports that
    build) and recorded only once built, at once, or by the next `add`/`import_vectors` when
    there are too few vectors to train it yet. One that cannot be built raises StructureError
    and the index keeps the structure it had.
    read_only opens an existing index without writing anything (searches, stats, export
    work; changes are refused); None (the default) does so when the folder or its
    database is not writable by this process.

    `options` (`model.ModelOptions`) say how new images are embedded: precision ("float32"
    or "mixed"; None: what the index records, float32 for a new one; another one is accepted
    only if it agrees with a few stored vectors, `VecIndex.check_precision`), batch_size,
    workers, and engine: "local" (this process) or "ray" (a Ray cluster at `ray_address`,
    else a local Ray; `workers` model actors with `gpus_per_worker` GPUs each).
    """
    IndexModel.check_options(model, options)
    if index_type is not None:
        check_index_type(index_type)
    budget = parse_memory(max_memory)
    directory = resolve_index_dir(path)
    store = open_folder(directory, create=create, read_only=read_only, restructure=index_type is not None or budget is not None)
    try:
        info = store.info() if create else store.require_info()
        if info is not None and index_type is None and budget is not None:
            index_type = info.index_type  # a new budget for the type it has
        embeds = IndexModel.for_index(directory, store, model, backbone, weights, seed, options)
        index = VecIndex(directory, store, embeds, index_type=index_type, max_memory=budget, progress=progress)
        if info is not None:
            index.live.convert_wanted(progress)
        return index
    except BaseException:
        store.close()
        raise
