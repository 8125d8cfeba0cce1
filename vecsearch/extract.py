"""The batched embedding pipeline.

Decoding runs ahead of the model in a thread pool (Pillow releases the GIL while it
decodes and resizes), with a bounded number of images in flight so memory stays flat on
huge folders. Each full batch goes through one compiled model call (`predict_on_batch`,
a tf.function / jax.jit under the hood), never eager `model(x)`.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import images
from .backbones import Backbone
from .config import default_batch_size, default_workers
from .errors import BadImageError
from .vectors import normalize, norms

log = logging.getLogger(__name__)

RESAMPLE = "bilinear"
"""Resize filter: Pillow's bilinear (antialiased when shrinking), the whole image to the
backbone's input size with no crop, as `keras.utils.load_img(..., interpolation="bilinear")`."""


@dataclass
class Embedded:
    """One file's outcome: a vector, or the reason it failed."""

    path: Path
    vector: np.ndarray | None = None  # L2-normalised float32 (dim,)
    norm: float = 0.0  # length of the raw pooled vector, kept so the ImageNet top can be applied later
    width: int = 0
    height: int = 0
    sha256: str = ""
    error: str | None = None


class Extractor:
    """Turns images into unit vectors with one backbone."""

    def __init__(self, backbone: Backbone, batch_size: int | None = None, workers: int | None = None):
        self.backbone = backbone
        self.batch_size = max(1, batch_size or default_batch_size(backbone.precision))
        self.workers = workers or default_workers()

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pooled features of a uint8/float batch (n, h, w, 3) of RGB pixels."""
        x = self.backbone.spec.preprocess(np.asarray(pixels, dtype=np.float32))
        out = self.backbone.model.predict_on_batch(x)
        # A mixed-precision model outputs float16/bfloat16: vectors are float32 from here on.
        return np.asarray(out, dtype=np.float32).reshape(len(pixels), -1)

    def pooled(self, pixels: np.ndarray) -> np.ndarray:
        """Raw pooled features of already-decoded pixels, in model-call batches (their lengths are kept for labels)."""
        out = [self.features(pixels[i : i + self.batch_size]) for i in range(0, len(pixels), self.batch_size)]
        if not out:
            return np.zeros((0, self.backbone.dim), np.float32)
        return np.concatenate(out)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Unit vectors for already-decoded pixels, in model-call batches."""
        return normalize(self.pooled(pixels))

    def _load(self, path: Path) -> images.LoadedImage:
        return images.read_image_file(path, self.backbone.input_size, resample=RESAMPLE)

    def embed_files(self, paths: Iterable[Path]) -> Iterator[Embedded]:
        """Yield one `Embedded` per path, in input order; a bad file yields its reason, never raises."""
        in_flight = self.batch_size * 3
        with ThreadPoolExecutor(self.workers, thread_name_prefix="vecsearch-decode") as pool:
            pending: deque[tuple[Path, Future]] = deque()
            it = iter(paths)

            def refill() -> None:
                """Keep `in_flight` decodes queued, so decoding never waits for the model."""
                while len(pending) < in_flight:
                    p = next(it, None)
                    if p is None:
                        return
                    pending.append((Path(p), pool.submit(self._load, Path(p))))

            while True:
                refill()
                if not pending:
                    return
                # Take up to one batch of finished-or-next decodes, keeping order.
                batch: list[Embedded] = []
                pixels: list[np.ndarray] = []
                while pending and len(pixels) < self.batch_size:
                    p, fut = pending.popleft()
                    refill()
                    try:
                        img = fut.result()
                    except BadImageError as e:
                        batch.append(Embedded(p, error=e.reason))
                        continue
                    except Exception as e:  # a decoder bug must not stop a 100k-image run
                        log.warning("unexpected error reading %s", p, exc_info=True)
                        batch.append(Embedded(p, error=f"unreadable: {type(e).__name__}: {e}"))
                        continue
                    batch.append(Embedded(p, width=img.width, height=img.height, sha256=img.sha256))
                    pixels.append(img.pixels)
                if pixels:
                    raw = self.features(np.stack(pixels))
                    vecs, lengths = normalize(raw), norms(raw)
                    j = 0
                    for item in batch:
                        if item.error is None:
                            item.vector, item.norm = vecs[j], float(lengths[j])
                            j += 1
                yield from batch
