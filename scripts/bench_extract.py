"""Benchmark the extraction pipeline: end-to-end `index` vs the bare model vs the naive loop.

    python scripts/bench_extract.py                # 12 MP and small JPEGs, ResNet50
    python scripts/bench_extract.py --n 32 --backbone xception

All figures come from one run on one machine, so the ratios are what to compare:
- bare model: the compiled model call on pre-decoded, pre-processed tensors (the ceiling);
- end-to-end: `VecIndex.add()` on a folder (decode, resize, embed, store, FAISS), model built;
- naive: the tutorials' loop, one image at a time: load_img -> img_to_array ->
  preprocess_input -> model.predict.
Weights are a seeded random init by default: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import os
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


def bare_model(backbone, n: int, batch: int) -> float:
    """Images/s of the compiled model on ready tensors."""
    from vecsearch.extract import Extractor

    ex = Extractor(backbone, batch)
    w, h = backbone.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (n, h, w, 3)).astype(np.float32)
    ex.features(pixels[:batch])  # trace + warm up
    t = time.perf_counter()
    for i in range(0, n, batch):
        ex.features(pixels[i : i + batch])
    return n / (time.perf_counter() - t)


def end_to_end(backbone, folder: Path, n: int, batch: int) -> float:
    from vecsearch import open_index

    with tempfile.TemporaryDirectory() as d:
        ix = open_index(Path(d) / "index", model=backbone, batch_size=batch)
        t = time.perf_counter()
        summary = ix.add([folder])
        dt = time.perf_counter() - t
        ix.close()
    assert summary.indexed == n and not summary.failed, summary
    return n / dt


def decode_only(backbone, paths: list[Path]) -> float:
    """Images/s of our decode + resize on one thread: the CPU that competes with the model."""
    from vecsearch import images

    t = time.perf_counter()
    for p in paths:
        images.read_image_file(p, backbone.input_size)
    return len(paths) / (time.perf_counter() - t)


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
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vecsearch import load_backbone

    t0 = time.perf_counter()
    backbone = load_backbone(args.backbone, args.weights)
    build_s = time.perf_counter() - t0
    naive_n = args.naive_n or args.n
    print(f"backbone {args.backbone} ({backbone.weights.describe()}), batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores, TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}; "
          f"import+build {build_s:.1f}s")
    with tempfile.TemporaryDirectory() as d:
        sets = {
            "12MP (4000x3000)": make_jpegs(Path(d) / "large", args.n, (4000, 3000), 1),
            "small (640x480)": make_jpegs(Path(d) / "small", args.n, (640, 480), 2),
        }
        bare = bare_model(backbone, args.n, args.batch_size)
        print(f"bare model (pre-decoded tensors): {bare:.1f} img/s")
        print(f"{'set':<18} {'decode 1 thread':>15} {'end-to-end':>11} {'naive loop':>11} {'e2e/bare':>9} {'e2e/naive':>10}")
        for name, paths in sets.items():
            dec = decode_only(backbone, paths[: min(len(paths), 32)])
            e2e = end_to_end(backbone, paths[0].parent, len(paths), args.batch_size)
            naive = naive_loop(backbone, paths[:naive_n])
            print(f"{name:<18} {dec:>13.1f}/s {e2e:>8.1f}/s {naive:>8.1f}/s {e2e / bare:>9.2f} {e2e / naive:>10.2f}")


if __name__ == "__main__":
    main()
