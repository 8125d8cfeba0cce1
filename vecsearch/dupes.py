"""Near-duplicate groups and small cosine-similarity matrices over an index.

Duplicates are found without an all-pairs matrix: each stored vector asks FAISS for its
k nearest neighbours (in batches), pairs at or above the threshold become edges of a
sparse graph, and the groups are that graph's connected components. Memory and time are
O(n * k), so it scales to large collections; a group bigger than k still comes out whole
as long as its members chain together through their neighbour lists.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .errors import VecsearchError
from .search import Searcher
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95
DEFAULT_NEIGHBOURS = 10
BATCH_SIZE = 1024
KEEP_RULES = ("oldest", "largest")
"""Which image of a group to keep. "oldest" (the default): the earliest modification time,
then the most bytes, then the shortest path -- the original, as copies are made after it,
and an upscaled copy, however many pixels it has, is not preferred. "largest": the most
pixels, then bytes -- which keeps an upscaled copy over its original."""
DEFAULT_KEEP = "oldest"


@dataclass
class DupeGroup:
    """Images linked by similarities >= the threshold; `score`/`min_score` span its edges.

    With a keep rule, `keep` is the path kept and `remove` the others (the copies to delete).
    """

    ids: list[int]
    paths: list[str]
    score: float  # the strongest link inside the group
    min_score: float  # the weakest link that joined it
    keep: str | None = None
    remove: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self) | {"size": len(self.ids)}
        if self.keep is None:
            del d["keep"], d["remove"]
        return d


def check_keep(keep: str | None) -> None:
    """A keep rule is None or one of KEEP_RULES (checked before the comparisons start)."""
    if keep is not None and keep not in KEEP_RULES:
        raise VecsearchError(f"keep must be one of {', '.join(KEEP_RULES)}, not {keep!r}.")


def choose_keepers(store: Store, groups: list[DupeGroup], keep: str = DEFAULT_KEEP) -> None:
    """Set each group's `keep` and `remove` by the rule (KEEP_RULES); ties go to the first path.

    An image whose modification time is unknown (imported without file facts) is kept by
    "oldest" only when no image of its group has one.
    """
    check_keep(keep)
    recs = store.images(i for g in groups for i in g.ids)
    for g in groups:

        def order(pair: tuple[int, str]) -> tuple:
            i, path = pair
            r = recs.get(i)
            if r is None:  # deleted meanwhile: never the one kept
                return (2, 0, 0, 0, path)
            if keep == "largest":
                return (0, -((r.width or 0) * (r.height or 0)), -(r.size or 0), 0, path)
            return (0 if r.mtime_ns else 1, r.mtime_ns or 0, -(r.size or 0), len(path), path)

        kept = min(zip(g.ids, g.paths, strict=False), key=order)[1]
        g.keep = kept
        g.remove = [p for p in g.paths if p != kept]


def duplicate_groups(
    store: Store,
    searcher: Searcher,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    k: int = DEFAULT_NEIGHBOURS,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> list[DupeGroup]:
    """Groups of >= 2 indexed images whose cosine similarity is >= threshold.

    Groups come largest first, then by first path; paths inside a group are sorted.
    `k` is how many neighbours each image asks for first; images whose k-th neighbour is
    still a duplicate ask again further out, so large groups are found whole.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not -1.0 <= threshold <= 1.0:
        raise VecsearchError(f"The threshold is a cosine similarity between -1 and 1, got {threshold}.")
    if k < 1:
        raise VecsearchError(f"k must be at least 1, got {k}.")
    all_ids = searcher.map.ids
    n = len(all_ids)
    if progress:
        progress(0, n)
    if not n:
        return []
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        batch = all_ids[start : start + batch_size]
        got, queries, _ = store.vectors(batch, dim=searcher.dim)
        fetch = min(k + 1, n)  # +1: each vector finds itself first
        while len(queries):
            scores, nbrs = searcher.search(queries, fetch)
            q_pos = np.repeat(np.searchsorted(all_ids, got), scores.shape[1])
            nbr_ids = nbrs.reshape(-1)
            keep = (scores.reshape(-1) >= threshold) & (nbr_ids >= 0)
            n_pos = np.searchsorted(all_ids, nbr_ids[keep])
            edge = n_pos != q_pos[keep]
            rows.append(q_pos[keep][edge])
            cols.append(n_pos[edge])
            vals.append(scores.reshape(-1)[keep][edge])
            if fetch >= n:
                break
            # An image whose last neighbour is still above the threshold may have more:
            # ask again, twice as far, so a group is never cut at k (exact on a flat index).
            more = scores[:, -1] >= threshold
            got, queries, fetch = got[more], queries[more], min(2 * fetch, n)
        if progress:
            progress(min(start + batch_size, n), n)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals).astype(np.float64) if vals else np.zeros(0)
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for pos, lab in enumerate(labels):
        members.setdefault(int(lab), []).append(pos)
    groups_pos = [m for m in members.values() if len(m) >= 2]
    # Strongest and weakest link per component in one pass (every group has >= 1 edge).
    best = np.full(labels.max() + 1, -np.inf)
    worst = np.full(labels.max() + 1, np.inf)
    np.maximum.at(best, labels[r], v)
    np.minimum.at(worst, labels[r], v)
    recs = store.images(int(all_ids[p]) for m in groups_pos for p in m)
    groups = []
    for m in groups_pos:
        lab = labels[m[0]]
        # An image deleted by a concurrent indexer since the vectors were read is left out.
        pairs = sorted((recs[int(all_ids[p])].path, int(all_ids[p])) for p in m if int(all_ids[p]) in recs)
        if len(pairs) < 2:
            continue
        groups.append(
            DupeGroup(
                ids=[i for _, i in pairs],
                paths=[p for p, _ in pairs],
                score=round(float(best[lab]), 6),
                min_score=round(float(worst[lab]), 6),
            )
        )
    groups.sort(key=lambda g: (-len(g.ids), g.paths[0]))
    log.info("%d near-duplicate groups among %d images at threshold %s", len(groups), n, threshold)
    return groups


def similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """The n x n cosine-similarity matrix of n >= 2 unit vectors."""
    vecs = np.asarray(vectors, np.float32)
    if len(vecs) < 2:
        raise VecsearchError(f"A similarity matrix needs at least 2 images, got {len(vecs)}.")
    sims = np.clip(vecs @ vecs.T, -1.0, 1.0)
    np.fill_diagonal(sims, 1.0)  # a unit vector against itself, without the float noise
    return sims
