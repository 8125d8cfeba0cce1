"""Which search structure an index uses: the named types, `auto`'s choice under a memory
budget, memory estimates, and tuning the search parameters to a target recall.

The choice follows autofaiss's heuristics (criteo/autofaiss, `get_optimal_index_keys_v2`):
exact search while it fits and is fast, then HNSW while its full vectors and graph fit the
budget, then an inverted file with product quantization. Two things differ because
vecsearch re-ranks every approximate result against the full vectors it stores anyway:
compressed codes only have to find candidates, so the IVF-PQ codes can be small; and
vectors are unit length, so the compressed structures use L2 (translation-invariant, so
PCA's centring is harmless), whose order on unit vectors is the cosine order.

Index types: `flat` (exact, no structure: a scan of the stored vectors), `hnsw`
(`HNSW32` graph over full float vectors), `ivf-pq` (`PCA{p},IVF{nlist},PQ{m}x8`,
parameters from the collection size; with an 8-bit full-vector re-ranking stage,
`Refine(SQ8)`, when the budget allows), `auto` (one of those, by size and budget), or any
FAISS factory string for experts (e.g. `OPQ32_128,IVF1024,PQ32x8`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from ..errors import StructureError, VecsearchError

NAMED_TYPES = ("auto", "flat", "hnsw", "ivf-pq")
DEFAULT_TYPE = "flat"
DEFAULT_MAX_MEMORY = 4 * 2**30
"""`auto`'s budget for the search structure when none is given."""
TARGET_RECALL = 0.97
"""Recall@10 (against exact search, after re-ranking) that search parameters are tuned to."""
FLAT_MAX = 50_000
"""`auto` keeps exact search up to this many vectors: a 2048-d scan is ~30 ms there."""
HNSW_MAX = 2_000_000
"""...and HNSW up to this many (its build grows with n log n)."""
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
PCA_DIM = 256
GROWTH_FACTOR = 4
"""A trained structure is rebuilt once the collection is this many times what it was built for."""
RERANK_MIN = 100
RERANK_PER_K = 10
"""Approximate candidates re-scored exactly: max(RERANK_MIN, RERANK_PER_K * k)."""

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$")
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str | int | None) -> int | None:
    """Bytes from "4GB", "512M", "1.5g", 4294967296 (binary units: 1GB = 2**30 bytes)."""
    if text is None or isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise VecsearchError(f"Cannot read {text!r} as a memory size; write e.g. 4GB, 512MB or 2G.")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()[:1]]
    if value < 2**16:
        raise VecsearchError(f"A memory budget of {text!r} is too small; give at least 64KB.")
    return int(value)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_index_type(index_type: str) -> str:
    """A named type, or something that looks like a FAISS factory string (FAISS judges it once the
    dimension is known, before anything is built: `live.structure_for`)."""
    if index_type in NAMED_TYPES:
        return index_type
    if (
        isinstance(index_type, str)
        and re.match(r"^[A-Za-z][A-Za-z0-9_,.+=x()-]*$", index_type)
        and any(c.isupper() for c in index_type)
    ):
        return index_type
    raise VecsearchError(
        f"Unknown index type {index_type!r}; choose one of: {', '.join(NAMED_TYPES)}, "
        "or give a FAISS factory string such as IVF1024,PQ32x8."
    )


@dataclass
class IndexSpec:
    """A resolved search structure: what is built, for how many vectors, and how it is searched."""

    index_type: str  # what the user asked for: a named type or a factory string
    factory: str  # "" for flat (no structure), else the FAISS factory string built
    metric: str = "l2"  # "ip" or "l2" (on unit vectors both order by cosine)
    built_for: int = 0  # vectors when chosen and trained
    params: dict = field(default_factory=dict)  # search parameters, e.g. {"nprobe": 16}
    rerank: bool = True  # re-score candidates exactly against the stored vectors
    memory_bytes: int = 0  # estimated size of the structure in RAM
    recall: float | None = None  # recall@10 measured when tuned (None: not measured)
    build_id: str = ""  # ties the saved structure file to the database's record of it

    @property
    def exact(self) -> bool:
        return not self.factory

    @property
    def trained(self) -> bool:
        return "IVF" in self.factory or "PQ" in self.factory or "PCA" in self.factory or "SQ" in self.factory

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IndexSpec":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def rerank_count(self, k: int) -> int:
        return max(RERANK_MIN, RERANK_PER_K * int(k))

    def needs_rebuild(self, n: int) -> bool:
        """Has the collection outgrown (or shrunk well below) what this structure was built for?"""
        if self.exact and self.index_type == "flat":
            return False
        if self.built_for <= 0:
            return n > 0
        if self.index_type == "auto" or self.trained:
            return n >= GROWTH_FACTOR * max(self.built_for, 1000) or (n >= 4000 and n * GROWTH_FACTOR <= self.built_for)
        return False


def flat_bytes(n: int, dim: int) -> int:
    return n * dim * 4


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M) -> int:
    # Full vectors, plus level-0 links (2M) and the upper levels' share (~1/M of nodes, M links).
    return int(n * (dim * 4 + 2 * m * 4 * 1.1 + 16))


def ivf_pq_params(n: int, dim: int) -> tuple[int, int, int, int]:
    """(pca dims, nlist, pq subquantizers, bits per code) for n vectors of `dim`.

    nlist ~ 4 sqrt(n) as a power of two (autofaiss), capped at 4096 so k-means trains in a
    minute or two on two cores; 4-dim PQ sub-vectors; fewer code bits on small sets, where
    256 centroids per sub-quantizer could not be trained.
    """
    p = min(dim, PCA_DIM)
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    nlist = int(min(max(nlist, 16), 4096, max(1, n // 39)))  # k-means wants >= 39 points a list
    m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if (p % m == 0 and p // m <= 8) or m == 1)
    nbits = int(min(8, max(1, math.floor(math.log2(max(n, 2) / 39)))))
    return p, nlist, m, nbits


def ivf_pq_minimum(n: int, dim: int) -> int:
    """Fewest vectors FAISS trains the ivf-pq structure for n on (`vectors.training_minimum`'s
    rules, which a test holds this to): its PCA one per output dimension, IVF one a list, PQ
    2**bits. The lists and codes are sized from n, so they fit it; the PCA to 256 dimensions
    does not below 256 vectors: a small collection of wide vectors cannot have this structure yet."""
    p, nlist, _, nbits = ivf_pq_params(n, dim)
    return max(nlist, 2**nbits, p if p < dim else 0)


def ivf_pq_factory(n: int, dim: int, refine: bool = False) -> str:
    p, nlist, m, nbits = ivf_pq_params(n, dim)
    return (f"PCA{p}," if p < dim else "") + f"IVF{nlist},PQ{m}x{nbits}" + (",Refine(SQ8)" if refine else "")


def ivf_pq_bytes(n: int, dim: int, refine: bool = False) -> int:
    p, nlist, m, nbits = ivf_pq_params(n, dim)
    codes = n * (m * nbits / 8 + 8) * 1.05 + nlist * p * 4 + (dim * p * 4 if p < dim else 0) + 2**nbits * p * 4
    return int(codes + (n * dim + 2 * dim * 4 if refine else 0))


def train_size(factory: str, n: int, dim: int, budget: int) -> int:
    """Vectors to train a structure on: enough for its k-means (39-256 a centroid), within a quarter of the budget."""
    nlist = 0
    if "IVF" in factory:
        ivf = re.search(r"IVF(\d+)", factory)
        assert ivf is not None, f"an IVF factory names its list count: {factory}"
        nlist = int(ivf.group(1))
    pq = re.search(r"PQ(\d+)(?:x(\d+))?", factory)
    ksub = 2 ** int(pq.group(2) or 8) if pq else 0
    wanted = max(64 * nlist, 64 * ksub, 10_000)
    # What is held at once: the whole sample, or (behind a PCA) the sample once shrunk.
    pca = re.match(r"PCA(\d+)", factory)
    width = int(pca.group(1)) if pca else dim
    cap = max(10_000, min(budget // 4, 2**29) // (width * 4))
    return int(min(n, wanted, cap))


def estimate_bytes(factory: str, n: int, dim: int) -> int:
    """RAM of a structure by factory string (rough for expert strings: codes + ids + tables)."""
    if not factory:
        return flat_bytes(n, dim)
    if factory.startswith("HNSW") and "," not in factory:
        hnsw = re.match(r"HNSW(\d*)", factory)
        assert hnsw is not None  # the factory starts with HNSW, and the digits may be none
        m = int(hnsw.group(1) or HNSW_M)
        return hnsw_bytes(n, dim, m)
    pq = re.search(r"PQ(\d+)(?:x(\d+))?", factory)
    if pq:
        code = int(pq.group(1)) * int(pq.group(2) or 8) // 8
    elif "SQ8" in factory:
        code = dim
    elif "SQ4" in factory:
        code = dim // 2
    else:
        code = dim * 4
    if "Refine(SQ8)" in factory:
        code += dim
    elif "RFlat" in factory or "Refine(Flat)" in factory:
        code += dim * 4
    return int(n * (code + 8) * 1.05)


def choose(index_type: str, n: int, dim: int, max_memory: int | None = None) -> IndexSpec:
    """Resolve a named type or factory string to what will be built for n vectors."""
    budget = max_memory or DEFAULT_MAX_MEMORY
    index_type = check_index_type(index_type)
    if index_type == "flat":
        return IndexSpec("flat", "", "ip", n, {}, False, flat_bytes(n, dim), 1.0)
    if index_type == "hnsw":
        return IndexSpec("hnsw", f"HNSW{HNSW_M}", "ip", n, {"efSearch": HNSW_EF_SEARCH}, True, hnsw_bytes(n, dim))
    if index_type == "ivf-pq":
        # PQ codes of a PCA projection find the right lists but rank poorly where neighbours
        # are close together; an 8-bit copy of the full vectors (SQ8, dim bytes each) re-ranks
        # their candidates in RAM first, when the budget has room for it.
        refine = ivf_pq_bytes(n, dim, True) <= budget
        return IndexSpec("ivf-pq", ivf_pq_factory(n, dim, refine), "l2", n, {}, True, ivf_pq_bytes(n, dim, refine))
    if index_type != "auto":
        return IndexSpec(index_type, index_type, "l2", n, {}, True, estimate_bytes(index_type, n, dim))
    if n <= FLAT_MAX and flat_bytes(n, dim) <= budget:
        spec = choose("flat", n, dim)
    elif n <= HNSW_MAX and hnsw_bytes(n, dim) <= budget:
        spec = choose("hnsw", n, dim)
    elif ivf_pq_minimum(n, dim) > n:
        # Too few vectors to train compressed codes (and too few for their size to matter):
        # the exact scan of the stored vectors until the collection grows (needs_rebuild).
        spec = choose("flat", n, dim)
    else:
        spec = choose("ivf-pq", n, dim, budget)
        if spec.memory_bytes > budget:
            raise StructureError(
                f"{n} vectors of {dim} dimensions need about {format_bytes(spec.memory_bytes)} even "
                f"compressed; the budget is {format_bytes(budget)}. Raise the memory budget.",
                option="max_memory",
            )
    spec.index_type = "auto"
    return spec
