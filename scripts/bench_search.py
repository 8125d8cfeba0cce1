"""Search at scale: one row per index type over N synthetic 2048-d vectors, measured in one run.

    python scripts/bench_search.py                  # N = 1,000,000 (about 25 minutes, 20 GB disk)
    python scripts/bench_search.py --n 100000       # a quick look

The vectors imitate ResNet50 pooled features: non-negative (ReLU then average pooling),
in clusters (photos of similar things), mostly small with a few large components. The
generator, seeded and streamed in chunks so memory stays flat: 1,000 sparse centres
c = relu(N(0, 1)) * Bernoulli(0.3) in R^2048; each vector x = relu(c + 0.6 N(0, 1)) for a
centre drawn uniformly, L2-normalised. Queries come from the same centres with other draws
(so they are not in the index), as a new photo near known ones would.

The vectors are written once as a vecsearch `.npz` export and imported (`vecsearch import`);
each index type is then built from the stored vectors (`open_index(index_type=...)`, as
`vecsearch reindex` does). Every measurement runs in a fresh subprocess, so its peak RSS
(ru_maxrss) is its own: opening the index, building the structure, and a search process
that runs the queries one at a time (k=10, through `VecIndex.search`) and checks recall@10
against exact brute force computed once beforehand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 2048
CENTRES = 1000
CHUNK = 1 << 16
META = {
    "backbone": "resnet50",
    "weights_kind": "random",
    "weights_seed": 1234,
    "weights_path": None,
    "weights_fingerprint": "synthetic-bench-search",
    "dim": DIM,
    "metric": "cosine",
}


def centres(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.standard_normal((CENTRES, DIM), np.float32), 0) * (rng.random((CENTRES, DIM)) < 0.3)).astype(
        np.float32
    )


def draw(c: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, CENTRES, n)] + 0.6 * rng.standard_normal((n, DIM), np.float32)
    np.maximum(x, 0, out=x)
    x += 1e-6
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children: each prints one JSON line --------------------------------------------------
def child(args) -> dict:
    from vecsearch import open_index

    t0 = time.perf_counter()
    if args.child == "generate":
        from vecsearch import vector_files

        c = centres()

        def batches():
            for i, start in enumerate(range(0, args.n, CHUNK)):
                n = min(CHUNK, args.n - start)
                vecs = draw(c, n, 1000 + i)
                yield (
                    np.arange(start, start + n),
                    [f"/photos/{j // 1000:04d}/{j:08d}.jpg" for j in range(start, start + n)],
                    vecs,
                    np.full(n, np.nan, np.float32),
                    {},
                )

        vector_files.write(args.file, META, DIM, batches(), args.n)
        np.save(args.queries, draw(c, args.q, 7))
        return {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb()}
    if args.child == "import":
        with open_index(args.index, index_type="flat") as ix:
            ix.import_vectors(args.file)
        return {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb()}
    if args.child == "truth":
        from vecsearch.search import IndexSpec, Searcher

        with open_index(args.index, create=False) as ix:
            exact = Searcher(ix.store.shards, ix.searcher.map, IndexSpec("flat", ""))
            _, ids = exact.search(np.load(args.queries), 10)
        np.save(args.truth, ids)
        return {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb()}
    if args.child == "build":
        with open_index(args.index, create=False, index_type=args.type, max_memory=args.max_memory) as ix:
            spec = ix.searcher.spec.to_dict()
        return {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb(), "spec": spec}
    if args.child == "open":
        with open_index(args.index, create=False) as ix:
            n = len(ix.searcher)
        return {"seconds": time.perf_counter() - t0, "rss_mb": rss_mb(), "vectors": n}
    if args.child == "search":
        queries, truth = np.load(args.queries)[: args.q], np.load(args.truth)[: args.q]
        with open_index(args.index, create=False) as ix:
            for q in queries[:3]:  # warm-up: first calls pay for imports and page faults
                ix.search(q, k=10)
            lat, found = [], []
            for q in queries:
                t = time.perf_counter()
                hits = ix.search(q, k=10)
                lat.append(time.perf_counter() - t)
                found.append([h.id for h in hits])
        recall = float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=False)]))
        return {
            "p50_ms": 1000 * float(np.median(lat)),
            "p95_ms": 1000 * float(np.percentile(lat, 95)),
            "recall": recall,
            "rss_mb": rss_mb(),
            "queries": len(queries),
        }
    raise SystemExit(f"unknown child {args.child}")


def run_child(mode: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", mode]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--q", type=int, default=200, help="queries per approximate type")
    ap.add_argument("--flat-q", type=int, default=20, help="queries for exact search (a full scan each)")
    ap.add_argument("--types", default="flat,hnsw,auto,PCA256,IVF4096,PQ64x8")
    ap.add_argument("--max-memory", default="4GB")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse the index and ground truth already in --workdir")
    ap.add_argument("--child", default=None)
    for name in ("file", "queries", "truth", "index", "type"):
        ap.add_argument(f"--{name}")
    args = ap.parse_args()
    if args.child:
        args.n, args.q = int(args.n), int(args.q)
        print(json.dumps(child(args)))
        return

    types = _split_types(args.types)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vecsearch-bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    file, queries, truth, index = work / "vectors.npz", work / "queries.npy", work / "truth.npy", work / "index"
    print(
        f"bench_search: N={args.n:,} vectors of {DIM}-d (synthetic, clustered, non-negative), k=10, "
        f"{os.cpu_count()} CPUs, workdir {work}",
        flush=True,
    )
    try:
        if args.reuse and (index / "index.db").exists() and truth.exists():
            imp = {"seconds": float("nan")}
            print(f"reusing the index and ground truth in {work}", flush=True)
        else:
            g = run_child("generate", n=args.n, q=args.q, file=file, queries=queries)
            print(f"generated in {g['seconds']:.0f}s ({file.stat().st_size / 2**30:.1f} GiB .npz)", flush=True)
            imp = run_child("import", n=args.n, q=args.q, file=file, index=index)
            print(
                f"imported in {imp['seconds']:.0f}s ({args.n / imp['seconds']:,.0f} vectors/s), peak RSS {imp['rss_mb']:.0f} MB",
                flush=True,
            )
            file.unlink()
            tr = run_child("truth", n=args.n, q=args.q, index=index, queries=queries, truth=truth)
            print(f"exact ground truth for {args.q} queries in {tr['seconds']:.0f}s", flush=True)
        rows = []
        for t in types:
            b = run_child("build", n=args.n, q=args.q, index=index, type=t, max_memory=args.max_memory)
            o = run_child("open", n=args.n, q=args.q, index=index)
            s = run_child(
                "search",
                n=args.n,
                q=args.flat_q if b["spec"]["factory"] == "" else args.q,
                index=index,
                queries=queries,
                truth=truth,
            )
            spec = b["spec"]
            disk = du(index)
            built = imp["seconds"] if t == "flat" else b["seconds"]
            row = {
                "type": t if t != "auto" else f"auto ({args.max_memory})",
                "structure": spec["factory"] or "exact scan",
                "params": spec["params"],
                "build_s": built,
                "build_rss_mb": b["rss_mb"],
                "open_rss_mb": o["rss_mb"],
                "search_rss_mb": s["rss_mb"],
                "disk_gb": disk / 2**30,
                "p50_ms": s["p50_ms"],
                "p95_ms": s["p95_ms"],
                "recall": s["recall"],
                "structure_mb": spec["memory_bytes"] / 2**20,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        print()
        print(
            f"{'type':<24} {'structure':<26} {'build s':>8} {'RSS build':>10} {'RSS open':>9} {'RSS search':>11} "
            f"{'disk GB':>8} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10}"
        )
        for r in rows:
            print(
                f"{r['type']:<24} {r['structure']:<26} {r['build_s']:>8.0f} {r['build_rss_mb']:>8.0f}MB "
                f"{r['open_rss_mb']:>7.0f}MB {r['search_rss_mb']:>9.0f}MB {r['disk_gb']:>8.2f} {r['p50_ms']:>8.2f} "
                f"{r['p95_ms']:>8.2f} {r['recall']:>10.3f}"
            )
        print(
            "(flat's build time is the import; others are built from the stored vectors after it. "
            "Disk: shards + index.db + the structure file.)"
        )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _split_types(text: str) -> list[str]:
    """Comma-separated types, where a FAISS factory string (itself with commas) starts with a capital."""
    out: list[str] = []
    for part in text.split(","):
        if out and part[:1].isupper() and out[-1][:1].isupper() and not part.startswith(("PCA", "OPQ")):
            out[-1] += "," + part
        else:
            out.append(part)
    return out


if __name__ == "__main__":
    main()
