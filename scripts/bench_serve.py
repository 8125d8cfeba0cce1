"""The HTTP service under concurrent load, micro-batched: one run prints the whole table.

Builds a throwaway index of `--vectors` vectors (a few real images embedded with the real
backbone, the rest synthetic unit vectors near theirs, stored under hard links to the real
files so every row is a valid image), then:

1. in this process: the model's CPU per image at batch 1 and at batch 32, and the decode
   CPU of one 640x480 JPEG upload (`time.process_time`, the model built as the server builds it);
2. `vecsearch serve --batch-size 0` (no batcher, today's one model call per request): the
   1-client upload latency, the baseline the batcher must not slow;
3. `vecsearch serve` (batched, defaults): POST /api/v1/search with a new 640x480 JPEG at
   each `--levels` client count: req/s, p50, p95, the server process's CPU per request
   (/proc/PID/stat before and after) and the mean model batch size (GET /api/v1/stats'
   `batcher` counters before and after); POST /api/v1/embed with `--embed-images` images a
   request the same way; `--abandon` clients that give up after `--abandon-timeout` s, then
   the next request's latency; the non-model, non-decode CPU of an upload (the 1-client
   server CPU per request less the model's batch-1 CPU and the decode CPU); peak RSS.

Each level runs `--seconds` (or `--requests`), so the run stays bounded on a loaded machine.

    python scripts/bench_serve.py                      # resnet50, seeded random init, 2,000 vectors
    python scripts/bench_serve.py --backbone tiny      # the test suite's tiny backbone, small counts (~20 s)

With `--engine ray` it measures Ray Serve instead (`vecsearch serve --engine ray`, a local Ray that
each server starts itself): POST /api/v1/search at `--ray-clients` (16) for the in-process server,
then for Ray with 1 and with 2 reader replicas, in one run: uploads/s, p50/p95, the ratios (goal on
2 cores: 1 replica >= 0.85x in-process, 2 replicas > 1 replica) and peak RSS per replica.

    python scripts/bench_serve.py --engine ray         # resnet50; --backbone tiny for a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import socket
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


def start_server(index: Path, port: int, backbone: str, extra: list[str] = ()) -> subprocess.Popen:
    pre = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import tiny_backbone; " if backbone == "tiny" else ""
    argv = ["serve", "--index", str(index), "--port", str(port), "--log-level", "warning", *extra]
    code = pre + f"from vecsearch.cli import app; app({argv!r})"
    # stderr to a file, never an unread pipe: the access log (a line a request) would fill it and block the server.
    log = open(index.parent / f"serve-{port}.log", "w")  # noqa: SIM115 (closed with the process, in stop_server)
    env = dict(os.environ)
    if backbone == "tiny":  # Ray's replicas import it too (serve --engine ray)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def stop_server(proc: subprocess.Popen, wait: float = 30) -> None:
    proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log.close()  # type: ignore[attr-defined]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> float:
    import httpx

    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {Path(proc.log.name).read_text()[-2000:]}")  # type: ignore[attr-defined]
        try:
            if httpx.get(base + "/api/v1/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("server did not come up")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batcher_counts(base: str) -> tuple[int, int, int, float]:
    """(batches, rows, dropped, model CPU seconds) of the server's batcher so far; zeros without one."""
    import httpx

    b = httpx.get(base + "/api/v1/stats", timeout=30).json().get("batcher") or {}
    return b.get("batches", 0), b.get("rows", 0), b.get("dropped", 0), b.get("model_cpu_s", 0.0)


def run(base: str, make_request, n: int, seconds: float, concurrency: int, pid: int | None = None, rows: int = 1) -> dict:
    """n requests (or until `seconds` pass) from `concurrency` threads; latencies in ms, the server's CPU and batches."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=300) as client:
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

    b0 = batcher_counts(base) if pid else (0, 0, 0, 0.0)
    c0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - c0 if pid else float("nan")
    b1 = batcher_counts(base) if pid else (0, 0, 0, 0.0)
    q = np.percentile(latencies, [50, 95]) if latencies else [float("nan")] * 2
    done = len(latencies)
    batches, batched_rows = b1[0] - b0[0], b1[1] - b0[1]
    return {
        "concurrency": concurrency,
        "requests": done,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": round(float(q[0]), 1),
        "p95_ms": round(float(q[1]), 1),
        "req_per_s": round(done / wall, 2) if wall else None,
        "cpu_ms_per_request": round(cpu * 1000 / done, 1) if done else None,
        "cpu_ms_per_image": round(cpu * 1000 / (done * rows), 1) if done else None,
        "mean_batch": round(batched_rows / batches, 1) if batches else None,
        # The server's CPU inside its model calls (the batcher times them), so the rest is the service's own.
        "model_cpu_ms_per_request": round((b1[3] - b0[3]) * 1000 / done, 1) if done and batches else None,
    }


def cpu_ms(fn, times: int, at_least: float = 0.5) -> float:
    """CPU ms per call of `fn`, over `times` calls or more (until `at_least` CPU seconds, for fast models)."""
    calls, t = 0, time.process_time()
    while calls < times or time.process_time() - t < at_least:
        fn()
        calls += 1
    return (time.process_time() - t) * 1000 / calls


def model_costs(index: Path, upload: bytes, n: int) -> dict:
    """CPU ms per image of the model at batch 1 and batch 32, and of decoding one upload, in this process."""
    from vecsearch import open_index
    from vecsearch.images import decode_image
    from vecsearch.model import RESAMPLE

    ix = open_index(index, create=False)
    try:
        size = ix.model.input_size
        t = time.process_time()
        reps = max(8, n)
        for _ in range(reps):
            px = decode_image(upload, size, max_pixels=None, resample=RESAMPLE)[0]
        decode_ms = (time.process_time() - t) * 1000 / reps
        ex = ix.model.extractor()
        ex.batch_size = 32
        one, batch = px[None], np.repeat(px[None], 32, axis=0)
        ex.embed_pixels(one), ex.embed_pixels(one[:1].repeat(2, 0)), ex.embed_pixels(batch)  # traces, oneDNN set-up
        b1 = cpu_ms(lambda: ex.embed_pixels(one), n)
        b32 = cpu_ms(lambda: ex.embed_pixels(batch), max(1, n // 32)) / 32
    finally:
        ix.close()
    return {"decode_ms": round(decode_ms, 2), "batch1_ms": round(b1, 2), "batch32_ms": round(b32, 2), "images": n}


def abandoned(base: str, make_request, clients: int, give_up: float, declare: bool = False) -> dict:
    """`clients` requests that give up after `give_up` s (their connections closed), then one more, timed.
    `declare`: they say so up front (X-Request-Timeout), as `vecsearch.Client` does."""
    import httpx

    gave_up = []
    headers = {"X-Request-Timeout": f"{give_up:g}"} if declare else None

    def impatient(i: int) -> None:
        with httpx.Client(base_url=base, timeout=give_up, headers=headers) as client:
            try:
                make_request(client, 1000 + i)
            except httpx.TimeoutException:
                gave_up.append(i)

    d0 = batcher_counts(base)
    threads = [threading.Thread(target=impatient, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with httpx.Client(base_url=base, timeout=300) as client:
        t = time.perf_counter()
        r = make_request(client, 0)
        ms = (time.perf_counter() - t) * 1000
    d1 = batcher_counts(base)
    return {"gave_up": len(gave_up), "next_ms": round(ms, 1), "next_status": r.status_code, "dropped": d1[2] - d0[2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet50", help="registered backbone (seeded random init); 'tiny' = the tests' one")
    ap.add_argument("--vectors", type=int, help="indexed vectors in all (default 2000; tiny: 300)")
    ap.add_argument("--real", type=int, default=24, help="real images embedded with the backbone")
    ap.add_argument("--k", type=int, default=10, help="neighbours per search")
    ap.add_argument("--levels", default="1,4,16,32", help="client counts for POST /search")
    ap.add_argument("--embed-levels", default="1,4", help="client counts for POST /embed")
    ap.add_argument("--embed-images", type=int, default=32, help="images per POST /embed request")
    ap.add_argument("--requests", type=int, help="most requests per level (default 400; tiny: 60)")
    ap.add_argument("--seconds", type=float, help="time cap per level (default 25; tiny: 1.5)")
    ap.add_argument("--model-images", type=int, help="images for the in-process model costs (default 32; tiny: 64)")
    ap.add_argument("--abandon", type=int, default=32, help="clients that give up")
    ap.add_argument("--abandon-timeout", type=float, default=1.0, help="seconds after which they give up")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `vecsearch serve` argument for the batched server")
    ap.add_argument(
        "--also-batch-size", type=int, action="append", default=[], help="also a server with this --batch-size (loaded levels)"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the unbatched server")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--keep", type=Path, help="build the index here and keep it (default: a temp folder, removed)")
    ap.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: in-process vs Ray Serve, 1 and 2 replicas")
    ap.add_argument("--ray-clients", type=int, default=16, help="with --engine ray: concurrent clients")
    ap.add_argument("--ray-replicas", default="1,2", help="with --engine ray: replica counts to measure")
    ap.add_argument(
        "--also-unsplit",
        action="store_true",
        help="with --engine ray: also each multi-replica run with every replica's model on all the cores",
    )
    args = ap.parse_args()
    tiny = args.backbone == "tiny"
    vectors = args.vectors or (300 if tiny else 2000)
    max_requests = args.requests or (60 if tiny else 400)
    seconds = args.seconds or (1.5 if tiny else 25.0)
    model_images = args.model_images or (64 if tiny else 32)
    levels = [int(x) for x in args.levels.split(",") if x]
    embed_levels = [int(x) for x in args.embed_levels.split(",") if x]

    if tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_backbone  # noqa: F401

    work = args.keep or Path(tempfile.mkdtemp(prefix="vecsearch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    proc = None
    report: dict = {"backbone": f"{args.backbone} (random init, seed {args.seed})", "cpus": os.cpu_count(), "k": args.k}
    try:
        t_start = time.perf_counter()
        report["index"] = build_index(work, args.backbone, vectors, args.real, args.seed)
        uploads = [_image(10_000 + i, (640, 480)) for i in range(64)]  # new photos, never indexed
        if args.engine == "ray":
            ray_bench(work / "index", args, uploads, max_requests, seconds, report)
            return
        report["model"] = model_costs(work / "index", uploads[0], model_images)

        by_upload = search_by_upload(uploads, args.k)

        def embed_many(client, i):
            files = [("file", (f"e{j}.jpg", uploads[(i + j) % len(uploads)], "image/jpeg")) for j in range(args.embed_images)]
            return client.post("/api/v1/embed", params={"format": "npy"}, files=files)

        servers = [("unbatched", ["--batch-size", "0"])] if not args.no_baseline else []
        servers.append(("batched", list(args.serve_arg)))
        servers += [(f"batch{n}", [*args.serve_arg, "--batch-size", str(n)]) for n in args.also_batch_size]
        for name, extra in servers:
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start_server(work / "index", port, args.backbone, extra)
            report[f"{name}_startup_s"] = round(wait_ready(base, proc, 600), 1)
            run(base, by_upload, 6, 120, 1)  # warm-up: connections, caches, the first model calls
            if name == "unbatched":
                report["unbatched"] = run(base, by_upload, max_requests, seconds, 1, proc.pid)
            elif name != "batched":  # another max batch: the loaded levels and the abandoned clients only
                run(base, by_upload, 8, 120, 4)
                also = report.setdefault("also", {})[name.removeprefix("batch")] = {
                    "search": [run(base, by_upload, max_requests, seconds, c, proc.pid) for c in levels if c > 1],
                    "abandoned": abandoned(base, by_upload, args.abandon, args.abandon_timeout),
                }
                also["abandoned"].update(clients=args.abandon, give_up_s=args.abandon_timeout)
            else:
                run(base, by_upload, 8, 120, 4)
                report["search"] = [run(base, by_upload, max_requests, seconds, c, proc.pid) for c in levels]
                probe = embed_many(httpx_client(base), 0)
                if probe.status_code in (404, 405):
                    report["embed"] = f"skipped: POST /api/v1/embed answers {probe.status_code} on this tree"
                else:
                    report["embed"] = [
                        run(base, embed_many, max(2, max_requests // 8), seconds, c, proc.pid, rows=args.embed_images)
                        for c in embed_levels
                    ]
                for key, declare in (("abandoned", False), ("abandoned_declared", True)):
                    report[key] = abandoned(base, by_upload, args.abandon, args.abandon_timeout, declare)
                    report[key].update(clients=args.abandon, give_up_s=args.abandon_timeout)
            report[f"{name}_peak_rss_mb"] = round(peak_rss_mb(proc.pid))
            stop_server(proc)
            proc = None
        report["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        report["load_average"] = [round(x, 2) for x in os.getloadavg()]
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        one = report["search"][0]
        m = report["model"]
        if one["cpu_ms_per_request"] is not None:
            report["other_cpu_ms_per_upload"] = round(one["cpu_ms_per_request"] - m["batch1_ms"] - m["decode_ms"], 1)
            if one.get("model_cpu_ms_per_request") is not None:  # the model's CPU as the server itself measured it
                report["other_cpu_ms_per_upload_measured"] = round(
                    one["cpu_ms_per_request"] - one["model_cpu_ms_per_request"] - m["decode_ms"], 1
                )
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_table(report, levels)
    finally:
        if proc is not None:
            stop_server(proc)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def search_by_upload(uploads: list[bytes], k: int):
    """The request both benches time: POST /api/v1/search with the i-th new photo."""

    def by_upload(client, i):
        return client.post("/api/v1/search", params={"k": k}, files={"file": ("q.jpg", uploads[i % len(uploads)], "image/jpeg")})

    return by_upload


def replica_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ServeReplica:vecsearch:reader"], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def ray_bench(index: Path, args, uploads: list[bytes], max_requests: int, seconds: float, report: dict) -> None:
    """The in-process server, then Ray Serve with each replica count, at the same load: one table."""

    by_upload = search_by_upload(uploads, args.k)

    clients, t_start = args.ray_clients, time.perf_counter()
    runs = [("in-process", [], 0)] + [
        (f"ray x{n}", ["--engine", "ray", "--replicas", n], int(n)) for n in args.ray_replicas.split(",") if n
    ]
    if args.also_unsplit:  # every replica's model on all the cores (what a cluster node gives by default)
        every = str(os.cpu_count() or 1)
        runs += [
            (f"ray x{n} all cores", ["--engine", "ray", "--replicas", n, "--threads-per-replica", every], int(n))
            for n in args.ray_replicas.split(",")
            if int(n) > 1
        ]
    rows = []
    for name, extra, replicas in runs:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(index, port, args.backbone, [*args.serve_arg, *extra])
        try:
            startup = wait_ready(base, proc, 900)
            run(base, by_upload, 8, 120, 1)  # warm-up: connections, the first model calls of every replica
            run(base, by_upload, 4 * clients, 120, clients)
            row = run(base, by_upload, max_requests, seconds, clients)
            pids = replica_pids() if replicas else [proc.pid]
            row.update(name=name, startup_s=round(startup, 1), rss_mb=[round(peak_rss_mb(p)) for p in pids])
            rows.append(row)
        finally:
            stop_server(proc, wait=120)  # a Ray server takes its application and its Ray down first
    report["ray"] = rows
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    ix = report["index"]
    print(
        f"vecsearch serve vs Ray Serve: {ix['vectors']} vectors, backbone {report['backbone']}, k={report['k']}, "
        f"{clients} clients, uploads 640x480 JPEG, {report['cpus']} CPUs, load average after "
        f"{' '.join(map(str, report['load_average']))}; run {report['seconds']} s"
    )
    print(
        f"{'server':<20} {'requests':>8} {'uploads/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6} {'start s':>7}  peak RSS MB (per replica)"
    )
    for r in rows:
        print(
            f"{r['name']:<20} {r['requests']:>8} {r['req_per_s']:>9.2f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['errors']:>6} "
            f"{r['startup_s']:>7}  {', '.join(map(str, r['rss_mb']))}"
        )
    by = {r["name"]: r for r in rows}
    local = by["in-process"]["req_per_s"]
    if "ray x1" in by and local:
        print(f"ray, 1 replica vs in-process: {by['ray x1']['req_per_s'] / local:.2f}x uploads/s (goal >= 0.85)")
    if "ray x1" in by and "ray x2" in by and by["ray x1"]["req_per_s"]:
        print(f"ray, 2 replicas vs 1: {by['ray x2']['req_per_s'] / by['ray x1']['req_per_s']:.2f}x uploads/s (goal > 1)")
    if "ray x1" in by and "ray x2 all cores" in by and by["ray x1"]["req_per_s"]:
        print(
            f"ray, 2 replicas each on all the cores vs 1: {by['ray x2 all cores']['req_per_s'] / by['ray x1']['req_per_s']:.2f}x uploads/s"
        )
    errs = [r["first_error"] for r in rows if r["errors"]]
    if errs:
        print("first error:", errs[0])
    print(f"peak RSS of this process: {report['bench_peak_rss_mb']} MB")


def httpx_client(base: str):
    import httpx

    return httpx.Client(base_url=base, timeout=300)


def print_table(report: dict, levels: list[int]) -> None:
    ix, m = report["index"], report["model"]
    print(
        f"vecsearch serve, micro-batched: {ix['vectors']} vectors ({ix['real']} embedded, rest synthetic), backbone "
        f"{report['backbone']}, k={report['k']}, uploads 640x480 JPEG, {report['cpus']} CPUs, load average after "
        f"{' '.join(map(str, report['load_average']))}; run {report['seconds']} s"
    )
    print(
        f"model CPU per image in-process: batch 1 {m['batch1_ms']} ms, batch 32 {m['batch32_ms']} ms "
        f"({m['batch1_ms'] / max(m['batch32_ms'], 1e-9):.2f}x); decode of one upload {m['decode_ms']} ms"
    )
    head = f"{'endpoint':<34} {'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'CPU ms/req':>10} {'mean batch':>10} {'errors':>6}"
    print(head)
    rows = []
    if "unbatched" in report:
        rows.append(("POST /search (unbatched server)", report["unbatched"]))
    rows += [("POST /search", r) for r in report["search"]]
    for n, also in report.get("also", {}).items():
        rows += [(f"POST /search (--batch-size {n})", r) for r in also["search"]]
    embed = report["embed"]
    if isinstance(embed, list):
        rows += [(f"POST /embed ({r['cpu_ms_per_image']} ms CPU/img)", r) for r in embed]
    for name, r in rows:
        print(
            f"{name:<34} {r['concurrency']:>7} {r['requests']:>8} {r['req_per_s']:>7.2f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
            f"{r['cpu_ms_per_request'] if r['cpu_ms_per_request'] is not None else float('nan'):>10.1f} "
            f"{r['mean_batch'] if r['mean_batch'] is not None else '-':>10} {r['errors']:>6}"
        )
    if not isinstance(embed, list):
        print(f"POST /embed: {embed}")
    errs = [r["first_error"] for _, r in rows if r["errors"]]
    if errs:
        print("first error:", errs[0])
    s = report["search"]
    one = s[0]
    by_c = {r["concurrency"]: r for r in s}
    if 16 in by_c and one["cpu_ms_per_request"] and one["req_per_s"]:
        r16 = by_c[16]
        print(
            f"16 clients vs 1: CPU per upload {r16['cpu_ms_per_request'] / one['cpu_ms_per_request']:.2f}x (goal <= 0.75), "
            f"throughput {r16['req_per_s'] / one['req_per_s']:.2f}x (goal >= 1.3)"
        )
    if "unbatched" in report and report["unbatched"]["p50_ms"]:
        print(
            f"1-client p50: batched {one['p50_ms']} ms vs unbatched {report['unbatched']['p50_ms']} ms "
            f"({one['p50_ms'] / report['unbatched']['p50_ms']:.2f}x, goal <= 1.1)"
        )
    a = report["abandoned"]
    print(
        f"{a['clients']} clients gave up after {a['give_up_s']} s ({a['gave_up']} timed out, {a['dropped']} dropped before "
        f"the model): the next request took {a['next_ms']} ms (status {a['next_status']}) = "
        f"{a['next_ms'] / one['p50_ms']:.2f}x the 1-client p50 (goal <= 2)"
    )
    if "abandoned_declared" in report:
        a = report["abandoned_declared"]
        print(
            f"{a['clients']} clients that said X-Request-Timeout: {a['give_up_s']:g} ({a['dropped']} dropped before the "
            f"model): the next request took {a['next_ms']} ms (status {a['next_status']}) = "
            f"{a['next_ms'] / one['p50_ms']:.2f}x the 1-client p50 (goal <= 2)"
        )
    for n, also in report.get("also", {}).items():
        a = also["abandoned"]
        print(
            f"--batch-size {n}: {a['clients']} clients gave up after {a['give_up_s']} s ({a['dropped']} dropped before the "
            f"model): the next request took {a['next_ms']} ms = {a['next_ms'] / one['p50_ms']:.2f}x the 1-client p50"
        )
    if "other_cpu_ms_per_upload" in report:
        print(
            f"non-model, non-decode CPU per upload at {ix['vectors']} images: {report['other_cpu_ms_per_upload']} ms "
            f"(1-client server CPU {one['cpu_ms_per_request']} - model {m['batch1_ms']} in-process - decode {m['decode_ms']}; goal <= 15)"
        )
    if "other_cpu_ms_per_upload_measured" in report:
        print(
            f"  the same with the model's CPU as the server measured it ({one['model_cpu_ms_per_request']} ms a request, "
            f"its model calls timed by the batcher): {report['other_cpu_ms_per_upload_measured']} ms"
        )
    print(
        f"peak RSS: batched server {report.get('batched_peak_rss_mb')} MB, unbatched server "
        f"{report.get('unbatched_peak_rss_mb', '-')} MB, this process {report['bench_peak_rss_mb']} MB"
    )


if __name__ == "__main__":
    main()
