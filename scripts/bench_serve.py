"""Latency and throughput of the HTTP service: search-by-id and search-by-upload, one run.

Builds a throwaway index of `--vectors` vectors (a few real images embedded with the real
backbone, the rest synthetic unit vectors near theirs, stored under hard links to the real
files so every row is a valid image), starts `vecsearch serve` on a free loopback port in a
subprocess, and times requests with httpx: first one at a time (latency p50/p95), then
from `--concurrency` client threads (throughput). Requests are bounded by count and time.

    python scripts/bench_serve.py                      # resnet50, seeded random init, 10,000 vectors
    python scripts/bench_serve.py --backbone tiny      # the test suite's tiny backbone (fast)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _image(seed: int, size: tuple[int, int]) -> bytes:
    """A smooth random colour JPEG, photo-like enough for decoders and resizers."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_index(directory: Path, backbone: str, n_vectors: int, n_real: int, seed: int) -> dict:
    from vecsearch import open_index

    photos = directory / "photos"
    photos.mkdir(parents=True)
    for i in range(n_real):
        (photos / f"real{i:03d}.jpg").write_bytes(_image(i, (640, 480)))
    t0 = time.perf_counter()
    ix = open_index(directory / "index", backbone=backbone, weights=None, seed=seed)
    summary = ix.add([photos])
    embed_s = time.perf_counter() - t0
    ids, real_vecs, norms = ix.store.vectors(dim=ix.info.dim)
    recs = ix.store.images(ids)
    rng = np.random.default_rng(seed)
    synthetic = directory / "synthetic"
    synthetic.mkdir()
    n_syn = max(0, n_vectors - len(ids))
    t0 = time.perf_counter()
    for start in range(0, n_syn, 1000):
        rows = []
        for j in range(start, min(start + 1000, n_syn)):
            src = j % len(ids)
            path = synthetic / f"syn{j:06d}.jpg"
            try:
                os.link(recs[int(ids[src])].path, path)  # same bytes, valid thumbnails, no disk cost
            except OSError:
                shutil.copyfile(recs[int(ids[src])].path, path)
            st = path.stat()
            v = real_vecs[src] + rng.normal(0, 0.02, real_vecs.shape[1]).astype(np.float32)
            rows.append(
                {
                    "path": str(path),
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "sha256": recs[int(ids[src])].sha256,
                    "width": 640,
                    "height": 480,
                    "status": "ok",
                    "reason": None,
                    "vector": v / np.linalg.norm(v),
                    "norm": float(norms[src]),
                }
            )
        ix.store.apply(upserts=rows)
    ix.close()
    ix = open_index(directory / "index", create=False)  # brings vectors.faiss up to date, saved
    total = len(ix)
    ix.close()
    return {
        "vectors": total,
        "real": summary.indexed,
        "embed_seconds": round(embed_s, 1),
        "synthetic_seconds": round(time.perf_counter() - t0, 1),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, backbone: str) -> subprocess.Popen:
    pre = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import tiny_backbone; " if backbone == "tiny" else ""
    code = (
        pre
        + f"from vecsearch.cli import app; app(['serve', '--index', {str(index)!r}, '--port', '{port}', '--log-level', 'warning'])"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> float:
    import httpx

    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("server did not come up")
        time.sleep(0.2)


def run(base: str, make_request, n: int, seconds: float, concurrency: int) -> dict:
    """n requests (or until `seconds` pass) from `concurrency` threads; latencies in ms."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = make_request(client, i)
                dt = (time.perf_counter() - t) * 1000
                with lock:
                    (latencies.append(dt) if r.status_code == 200 else errors.append(f"{r.status_code} {r.text[:100]}"))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.percentile(latencies, [50, 95]) if latencies else [float("nan")] * 2
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": round(float(q[0]), 2),
        "p95_ms": round(float(q[1]), 2),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "req_per_s": round(len(latencies) / wall, 1) if wall else None,
        "concurrency": concurrency,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet50", help="registered backbone (seeded random init); 'tiny' = the tests' one")
    ap.add_argument("--vectors", type=int, default=10_000, help="indexed vectors in all")
    ap.add_argument("--real", type=int, default=24, help="real images embedded with the backbone")
    ap.add_argument("--k", type=int, default=10, help="neighbours per search")
    ap.add_argument("--id-requests", type=int, default=1000, help="search-by-id requests per phase")
    ap.add_argument("--upload-requests", type=int, default=100, help="search-by-upload requests per phase")
    ap.add_argument("--seconds", type=float, default=30.0, help="time cap per phase")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads in the throughput phase")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--keep", type=Path, help="build the index here and keep it (default: a temp folder, removed)")
    args = ap.parse_args()

    if args.backbone == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_backbone  # noqa: F401

    work = args.keep or Path(tempfile.mkdtemp(prefix="vecsearch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    proc = None
    try:
        built = build_index(work, args.backbone, args.vectors, args.real, args.seed)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(work / "index", port, args.backbone)
        startup = wait_ready(base, proc, 300)

        rng = np.random.default_rng(args.seed)
        ids = rng.choice(np.arange(1, built["vectors"] + 1), size=args.id_requests, replace=True).tolist()
        uploads = [_image(10_000 + i, (800, 600)) for i in range(16)]  # new photos, never indexed

        def by_id(client, i):
            return client.get(f"/api/images/{ids[i % len(ids)]}/similar", params={"k": args.k})

        def by_upload(client, i):
            return client.post(
                "/api/search", params={"k": args.k}, files={"file": ("q.jpg", uploads[i % len(uploads)], "image/jpeg")}
            )

        run(base, by_id, 20, 30, 1)  # warm-up: connections, caches, the model's first calls
        run(base, by_upload, 5, 60, 1)
        results = {
            "search_by_id": run(base, by_id, args.id_requests, args.seconds, 1),
            "search_by_id_concurrent": run(base, by_id, args.id_requests, args.seconds, args.concurrency),
            "search_by_upload": run(base, by_upload, args.upload_requests, args.seconds, 1),
            "search_by_upload_concurrent": run(base, by_upload, args.upload_requests, args.seconds, args.concurrency),
        }
        report = {
            "backbone": f"{args.backbone} (random init, seed {args.seed})",
            "index": built,
            "k": args.k,
            "upload": "800x600 JPEG",
            "server_startup_s": round(startup, 1),
            "cpus": os.cpu_count(),
            "results": results,
        }
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(
                f"vecsearch serve: {built['vectors']} vectors ({built['real']} embedded, rest synthetic), backbone {report['backbone']}, "
                f"k={args.k}, uploads {report['upload']}, {os.cpu_count()} CPUs; server ready {startup:.1f}s after launch"
            )
            print(f"{'endpoint':<30} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7} {'errors':>6}")
            for name, r in results.items():
                print(
                    f"{name:<30} {r['concurrency']:>7} {r['requests']:>8} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
                    f"{r['req_per_s']:>7.1f} {r['errors']:>6}"
                )
            if any(r["errors"] for r in results.values()):
                print("first error:", next(r["first_error"] for r in results.values() if r["errors"]))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
