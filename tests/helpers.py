"""Helpers shared by the test modules: images made on the spot, the CLI, the Keras recipe, a live server,
synthetic vectors and indexes of them, stored ImageNet labels.

Imported as `helpers` (conftest puts this folder on sys.path); fixtures stay in conftest.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

TESTS = Path(__file__).parent
TINY = ["--backbone", "tiny", "--weights", "none", "--seed", "7"]
"""The CLI flags of the registered tiny test backbone with its seeded random init."""


# -- images ----------------------------------------------------------------------------
def make_image(path: Path, seed: int, size=(64, 48), fmt=None) -> Path:
    """A smooth random colour image (blobs, not noise, so JPEG and resizing behave like photos)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def png_header_only(width: int, height: int, colour_type: int = 2, padding: int = 0) -> bytes:
    """A PNG that declares width x height but carries almost no data: a decompression bomb's header.

    colour_type 2 is RGB, 0 grey (a quarter of the memory when Pillow allocates it);
    `padding` private chunks before the data make opening it take a while."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    pad = chunk(b"vsPd", b"") * padding
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + pad + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


# -- the CLI ---------------------------------------------------------------------------
def run(*args, ok=True):
    """Invoke the CLI in-process; with ok, insist on exit code 0 (showing the output if not)."""
    from typer.testing import CliRunner

    from vecsearch.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def run_json(*args):
    """The CLI's `--json` output, parsed."""
    return json.loads(run(*args, "--json").stdout)


def one_line_error(result, *words: str) -> str:
    """The CLI failed with exit 1 and one `Error:` line (holding `words`), no traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    return lines[0]


# -- the reference no one here wrote -----------------------------------------------------
def unit(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def keras_recipe(model, paths, target_size: tuple[int, int], preprocess_input, *, normalise: bool = True) -> np.ndarray:
    """The tutorials' recipe, written once: `keras.utils.load_img(path, target_size, bilinear)` ->
    `img_to_array` -> the application's `preprocess_input` -> `model.predict`.

    `target_size` is (height, width) as load_img takes it. Rows are unit vectors (float64)
    unless `normalise` is False (e.g. class probabilities of a with-top model).
    """
    import keras

    x = np.stack(
        [keras.utils.img_to_array(keras.utils.load_img(str(p), target_size=target_size, interpolation="bilinear")) for p in paths]
    )
    out = np.asarray(model.predict(preprocess_input(x), verbose=0), np.float64)
    return unit(out) if normalise else out


# -- a live server ---------------------------------------------------------------------
PAGE_TAUGHT = {
    "a/img00.jpg": "cat",
    "a/img01.jpg": "cat",
    "a/img02.jpg": "cat",
    "b/img06.jpg": "dog",
    "b/img07.jpg": "dog",
    "b/img08.jpg": "dog",
}
"""The labels conftest's `labelled_served_index` is taught, by path under its photos/."""


@contextmanager
def live_server(app):
    """uvicorn on a free loopback port in a thread: real sockets, real HTTP."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def start_serve(index_dir, env=None, args=(), port=None):
    """`vecsearch serve` on the tiny backbone in a subprocess on a free port (or `port`): (proc, port).

    `args`: more serve options (e.g. "--allow-writes", "--allow-root", DIR); `env` adds to the
    environment (e.g. VECSEARCH_ADMIN_TOKEN)."""
    import os
    import subprocess
    import sys

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    argv = ["serve", "--index", str(index_dir), "--port", str(port), "--log-level", "warning", *map(str, args)]
    code = "import sys; sys.path.insert(0, %r); import tiny_backbone; from vecsearch.cli import app; app(%r)" % (str(TESTS), argv)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    return proc, port


def wait_until_serving(proc, port: int, timeout: float = 120):
    """Poll a `vecsearch serve` subprocess's /api/health until it answers; its first response."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
        except httpx.TransportError:
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)


def index_in_subprocess(root, index, *extra, env=None):
    """`vecsearch index ROOT` on the tiny backbone (seed 7, batch 4, quiet) in a subprocess, to be killed."""
    import os
    import subprocess
    import sys

    args = [
        "index",
        str(root),
        "--index",
        str(index),
        "--backbone",
        "tiny",
        "--weights",
        "none",
        "--seed",
        "7",
        "--batch-size",
        "4",
        "--quiet",
        *map(str, extra),
    ]
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny_backbone; from vecsearch.cli import app; app({args!r})"
    return subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def image_rows(index) -> int:
    """Rows in an index's images table, read-only while another process writes it (0 before it exists)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{Path(index) / 'index.db'}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("select count(*) from images").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


# -- synthetic vectors -------------------------------------------------------------------
DIM = 32
"""The tiny backbone's dimension: synthetic vectors imported into a tiny-model index have it."""


def clustered_vectors(
    n: int, dim: int, *, clusters: int = 20, spread: float = 0.35, seed: int = 0, centres_seed: int = 1234
) -> np.ndarray:
    """Unit vectors like pooled CNN features: non-negative, in clusters around sparse centres.

    The centres depend on `centres_seed` only, so draws with other `seed`s (queries) come
    from the same collection's distribution.
    """
    crng = np.random.default_rng(centres_seed)
    centres = np.maximum(crng.standard_normal((clusters, dim)), 0) * (crng.random((clusters, dim)) < 0.5)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, clusters, n)
    x = np.maximum(centres[which] + spread * rng.standard_normal((n, dim)), 0) + 1e-3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_vector_file(path: Path, vectors: np.ndarray, meta: dict, *, paths=None, norms=None) -> Path:
    """A .npz as `vecsearch export` writes it, made without vecsearch (np.savez)."""
    n = len(vectors)
    paths = paths if paths is not None else [f"/nowhere/synthetic/{i:07d}.jpg" for i in range(n)]
    arrays = {
        "ids": np.arange(1, n + 1),
        "paths": np.array(paths, dtype=str),
        "vectors": np.asarray(vectors, np.float32),
        "meta": np.array(json.dumps(meta)),
    }
    if norms is not None:
        arrays["norms"] = np.asarray(norms, np.float32)
    np.savez(path, **arrays)
    return path


def filtered_index(tmp_path, model_meta, index_type, n=3000):
    """n synthetic vectors in folders /data/f0../data/f9 (f1_x is a sibling whose name starts like f1),
    a tenth taught "cat", a tenth predicted "dog" by the newest classifier."""
    from vecsearch import open_index

    vecs = clustered_vectors(n, DIM, seed=0)
    folders = [f"/data/f{i % 10}" if i % 10 != 9 else "/data/f1_x" for i in range(n)]
    paths = [f"{d}/{i:06d}.jpg" for i, d in enumerate(folders)]
    f = write_vector_file(tmp_path / "v.npz", vecs, model_meta, paths=paths)
    ix = open_index(tmp_path / f"ix-{index_type}", index_type=index_type)
    ix.import_vectors(f)
    ids, base, _ = ix.store.vectors()
    path_of = {r.id: r.path for r in ix.store.iter_images()}
    ix.store.set_user_labels((int(i), "cat", None, "test") for i in ids[::10])
    ix.store.save_classifier_row("old", "knn", None, "{}", "{}")
    ix.store.set_predictions("old", ((int(i), "dog", 0.9) for i in ids[1::7]))
    ix.store.save_classifier_row("new", "knn", None, "{}", "{}")
    ix.store.set_predictions("new", ((int(i), "dog", 0.9) for i in ids[3::10]))
    return ix, ids, base, path_of


def brute_force(base_ids: np.ndarray, base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine (float64), ties by id: the reference for every index type."""
    scores = np.asarray(queries, np.float64) @ np.asarray(base, np.float64).T
    order = np.lexsort((np.broadcast_to(base_ids, scores.shape), -scores), axis=-1)[:, :k]
    return base_ids[order], np.take_along_axis(scores, order, axis=1)


def big_png(path: Path, width: int, height: int, channels: int = 4) -> Path:
    """A width x height PNG of transparent black (RGBA; RGB with channels=3), written a row at a
    time: a 110 MP one is ~430 KB on disk and never held whole in this process's memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    colour_type = {3: 2, 4: 6}[channels]
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + width * channels)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


# -- stored ImageNet labels ----------------------------------------------------------------
TENCH = ("n01440764", "tench")
GOLDFISH = ("n01443537", "goldfish")


def store_imagenet_labels(index_dir, table: dict[str, list[tuple[str, str, float]]]) -> dict[str, int]:
    """Write ImageNet top-k rows ({path: [(wnid, name, prob), ...] best first}) straight into the store."""
    from vecsearch import open_index
    from vecsearch.labels import find_classes

    with open_index(index_dir, create=False) as ix:
        ids = {rec.path: rec.id for rec in ix.images(0, 1000)[1]}
        rows = [
            (ids[p], rank, find_classes(wnid)[0].index, wnid, name, prob)
            for p, labels in table.items()
            for rank, (wnid, name, prob) in enumerate(labels, 1)
        ]
        ix.store.set_imagenet_labels([ids[p] for p in table], rows)
    return ids
