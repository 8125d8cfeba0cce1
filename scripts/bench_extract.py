"""Benchmark the extraction pipeline: end-to-end `index` vs the bare model vs the naive loop.

    python scripts/bench_extract.py                # 12 MP and small JPEGs, ResNet50
    python scripts/bench_extract.py --n 32 --backbone xception
    python scripts/bench_extract.py --engine ray   # also Ray with 1 and 2 model workers

All figures come from one run on one machine, so the ratios are what to compare:
- bare model: the compiled model call on pre-decoded, pre-processed tensors (the ceiling);
- end-to-end: `VecIndex.add()` on a folder (decode, resize, embed, store, FAISS), model built;
- naive: the tutorials' loop, one image at a time: load_img -> img_to_array ->
  preprocess_input -> model.predict;
- CPU bound: what end-to-end could reach if the cores did nothing but run the model and
  decode, `1 / (1/bare + decode_cpu_seconds_per_image / cores)`: on a CPU the model and
  JPEG decoding share the same cores. decode CPU is measured on one thread (read, hash,
  decode, resize), so the bound charges it once, however many threads run it.
Weights are a seeded random init by default: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields plus grain), written once per run."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    base = []
    for _ in range(4):  # a few distinct large bases, varied per image cheaply
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img += rng.integers(-12, 12, img.shape, dtype=np.int16)
        base.append(np.clip(img, 0, 255).astype(np.uint8))
    paths = []
    for i in range(n):
        arr = np.roll(base[i % 4], shift=(i * 37) % h, axis=0)
        p = folder / f"img{i:04d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def bare_model(backbone, n: int, batch: int) -> tuple[float, float]:
    """(images/s, process CPU seconds per image) of the compiled model on ready tensors."""
    from vecsearch.extract import Extractor

    ex = Extractor(backbone, batch)
    w, h = backbone.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (n, h, w, 3)).astype(np.float32)
    ex.features(pixels[:batch])  # trace + warm up
    ex.features(pixels[:batch])
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(0, n, batch):
        ex.features(pixels[i : i + batch])
    return n / (time.perf_counter() - t), (time.process_time() - cpu) / n


def end_to_end(backbone, folder: Path, n: int, batch: int) -> tuple[float, float]:
    """(images/s, process CPU seconds per image) of `VecIndex.add()` on the folder."""
    from vecsearch import open_index

    with tempfile.TemporaryDirectory() as d:
        ix = open_index(Path(d) / "index", model=backbone, batch_size=batch)
        t, cpu = time.perf_counter(), time.process_time()
        summary = ix.add([folder])
        dt, cpu = time.perf_counter() - t, time.process_time() - cpu
        ix.close()
    assert summary.indexed == n and not summary.failed, summary
    return n / dt, cpu / n


def decode_only(backbone, paths: list[Path]) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of our read + hash + decode + resize on one thread:
    the CPU that competes with the model."""
    from vecsearch import images
    from vecsearch.extract import RESAMPLE

    images.read_image_file(paths[0], backbone.input_size, resample=RESAMPLE)  # warm the page cache and Pillow
    t, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        images.read_image_file(p, backbone.input_size, resample=RESAMPLE)
    cpu = time.process_time() - cpu
    return len(paths) / (time.perf_counter() - t), cpu / len(paths)


def cpu_bound(bare: float, decode_cpu: float, cores: int) -> float:
    """Images/s if the cores only ran the model (`bare` img/s on all of them) and the decodes."""
    return 1.0 / (1.0 / bare + decode_cpu / cores)


def ray_seconds(backbone, paths: list[Path], batch: int, workers: int) -> float:
    """Seconds the Ray engine takes to embed `paths` with `workers` model actors, start-up included
    (each call starts its actors and builds their models)."""
    from vecsearch.ray_engine import ModelRecipe, RayEngine

    recipe = ModelRecipe.for_model(backbone.name, backbone.weights, batch_size=batch, fingerprint=backbone.fingerprint)
    engine = RayEngine(_with_precision(recipe, backbone.precision), workers=workers)
    t0 = time.perf_counter()
    for item in engine.embed_files(paths):
        assert item.error is None, item.error
    return time.perf_counter() - t0


def _with_precision(recipe, precision: str):
    import dataclasses

    return dataclasses.replace(recipe, precision=precision) if hasattr(recipe, "precision") else recipe


def naive_loop(backbone, paths: list[Path]) -> float:
    from vecsearch.backbones import import_keras

    keras = import_keras()
    w, h = backbone.input_size
    model = backbone.model

    def one(p):
        img = keras.utils.load_img(str(p), target_size=(h, w))
        x = keras.utils.img_to_array(img)[None]
        return model.predict(backbone.spec.preprocess(x), verbose=0)

    one(paths[0])  # warm up
    t = time.perf_counter()
    for p in paths:
        one(p)
    return len(paths) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="images per set")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--weights", default="none", help="none (seeded random), imagenet, or a file")
    ap.add_argument("--naive-n", type=int, default=None, help="images for the naive loop (default: --n)")
    ap.add_argument("--precision", default="float32", choices=["float32", "mixed"])
    ap.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="ray: also Ray with 1 and 2 model workers on the same sets (a local Ray)",
    )
    ap.add_argument("--skip-naive", action="store_true", help="leave out the naive loop (slow on 12 MP)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of bare and end-to-end per set; the best counts")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vecsearch import load_backbone

    t0 = time.perf_counter()
    backbone = load_backbone(args.backbone, args.weights, precision=args.precision)
    build_s = time.perf_counter() - t0
    naive_n = args.naive_n or args.n
    cores = os.cpu_count() or 1
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sys.stdout.reconfigure(line_buffering=True)
    print(
        f"backbone {args.backbone} ({backbone.weights.describe()}), {args.precision}, batch {args.batch_size}, "
        f"{args.n} images a set, {cores} CPU cores, load average {load}, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}; import+build {build_s:.1f}s"
    )
    with tempfile.TemporaryDirectory() as d:
        sets = {
            "12MP (4000x3000)": make_jpegs(Path(d) / "large", args.n, (4000, 3000), 1),
            "small (640x480)": make_jpegs(Path(d) / "small", args.n, (640, 480), 2),
        }
        # Others may use the CPU too: the bare model is measured again right before each
        # set's end-to-end runs, and each rate is the best of --repeat runs. CPU seconds per
        # image do not depend on how much of the machine others take: end-to-end's against the
        # model's plus the decode's says whether any CPU goes elsewhere (threads, hashing, commits).
        print(
            f"{'set':<18} {'decode 1 thread':>15} {'bare':>8} {'CPU bound':>10} {'end-to-end':>11} "
            f"{'e2e/bound':>9} {'naive loop':>11} {'e2e/bare':>9} {'e2e/naive':>10}   "
            f"CPU ms/img: model + decode = sum vs end-to-end"
        )
        e2e_rates = {}
        for name, paths in sets.items():
            dec, dec_cpu = decode_only(backbone, paths[: min(len(paths), 32)])
            bares, e2es = [], []
            for _ in range(args.repeat):
                bares.append(bare_model(backbone, args.n, args.batch_size))
                e2es.append(end_to_end(backbone, paths[0].parent, len(paths), args.batch_size))
            (bare, bare_cpu), (e2e, e2e_cpu) = max(bares), max(e2es)
            bound = cpu_bound(bare, dec_cpu, cores)
            e2e_rates[name] = e2e
            naive = float("nan") if args.skip_naive else naive_loop(backbone, paths[:naive_n])
            print(
                f"{name:<18} {dec:>13.1f}/s {bare:>6.1f}/s {bound:>8.1f}/s {e2e:>8.1f}/s "
                f"{e2e / bound:>9.2f} {naive:>8.1f}/s {e2e / bare:>9.2f} {e2e / naive:>10.2f}   "
                f"{bare_cpu * 1e3:.0f} + {dec_cpu * 1e3:.0f} = {(bare_cpu + dec_cpu) * 1e3:.0f} vs {e2e_cpu * 1e3:.0f}"
            )
        if args.engine == "ray":
            import ray

            # Each model actor reserves 1 logical CPU and each decode task 0.5: with cores logical
            # CPUs, 2 actors on 2 cores would leave decoding none (the engine refuses that pool). Threads of the in-process engine
            # share the cores the same way, unreserved; so Ray gets 2 logical CPUs a core.
            ray.init(num_cpus=2 * cores, include_dashboard=False, configure_logging=False, log_to_driver=False)
            print(
                f"Ray engine (a local Ray on this machine, {2 * cores} logical CPUs), same sets; 'all' includes "
                "Ray's start-up (actors, model builds), 'steady' takes out its start-up on 2 images"
            )
            print(f"{'set':<18} {'workers':>7} {'in-process':>11} {'Ray all':>9} {'Ray steady':>11} {'Ray/in-process':>15}")
            fixed = {w: ray_seconds(backbone, sets["small (640x480)"][:2], args.batch_size, w) for w in (1, 2)}
            print(
                "start-up (2 small images): " + ", ".join(f"{w} worker{'s' if w > 1 else ''} {t:.1f}s" for w, t in fixed.items())
            )
            for name, paths in sets.items():
                for workers in (1, 2):
                    seconds = ray_seconds(backbone, paths, args.batch_size, workers)
                    rest = seconds - fixed[workers]  # nan when the set took no longer than the start-up alone
                    total, steady = len(paths) / seconds, (len(paths) / rest if rest > 0.1 * seconds else float("nan"))
                    local = e2e_rates[name]
                    print(
                        f"{name:<18} {workers:>7} {local:>9.1f}/s {total:>7.1f}/s {steady:>9.1f}/s "
                        f"{steady / local:>8.2f} steady, {total / local:.2f} all"
                    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB" + ("; Ray's workers are other processes" if args.engine == "ray" else ""))


if __name__ == "__main__":
    main()
