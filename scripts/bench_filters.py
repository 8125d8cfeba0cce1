"""Filtered search: latency and recall@10 of `VecIndex.search(..., under=...)` against brute force.

    python scripts/bench_filters.py                 # N = 50,000 2048-d vectors, flat and hnsw
    python scripts/bench_filters.py --n 200000 --types 'hnsw;IVF256,SQ8;ivf-pq'

Synthetic clustered vectors (as scripts/bench_search.py draws them) are imported under 100
folders, /bench/f00 .. /bench/f99, each holding 1% of them; a filter keeps 1, 10 or 50
folders. For each index type and filter, queries (not in the index) run one at a time
through `VecIndex.search(q, k=10, under=...)`; recall@10 is against exact brute force over
the vectors that pass the filter. One run, one machine: compare the rows with each other.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_search import META, centres, draw  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--q", type=int, default=50)
    ap.add_argument("--types", default="flat;hnsw", help="index types, separated by ';' (factory strings hold commas)")
    args = ap.parse_args()

    from vecsearch import open_index
    from vecsearch.vectors import normalize

    c = centres()
    base = draw(c, args.n, seed=1)
    queries = normalize(draw(c, args.q, seed=2))
    folder = np.arange(args.n) % 100
    paths = [f"/bench/g{f // 10}/f{f % 10}/{i:07d}.jpg" for i, f in enumerate(folder)]
    filters = [
        ("none", None, np.ones(args.n, bool)),
        ("under=/bench/g0", "/bench/g0", folder < 10),
        ("under=/bench/g0/f0", "/bench/g0/f0", folder == 0),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "v.npz"
        np.savez(export, ids=np.arange(1, args.n + 1), paths=np.array(paths), vectors=base, meta=np.array(json.dumps(META)))
        print(f"{args.n} vectors of {base.shape[1]} dimensions, {args.q} queries, k=10")
        print(f"{'type':<6} {'filter':<20} {'kept':>5} {'ms/query':>9} {'recall@10':>10}")
        for index_type in args.types.split(";"):
            ix = open_index(Path(tmp) / index_type, index_type=index_type)
            ix.import_vectors(export)
            for what, under, keep in filters:
                kw = {"under": under} if under else {}
                truth_rows = np.flatnonzero(keep)
                order = np.argsort(-(queries @ base[truth_rows].T), axis=1)[:, :10]
                truth = truth_rows[order]
                ix.search(queries[0], k=10, **kw)  # warm
                t0 = time.perf_counter()
                got = [ix.search(q, k=10, **kw) for q in queries]
                ms = (time.perf_counter() - t0) / len(queries) * 1000
                found = [{int(Path(h.path).stem) for h in hits} for hits in got]
                recall = np.mean([len(f & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=False)])
                print(f"{index_type:<6} {what:<20} {keep.mean():>5.0%} {ms:>9.1f} {recall:>10.3f}")
            ix.close()


if __name__ == "__main__":
    main()
