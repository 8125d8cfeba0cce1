"""scikit-learn's bundled digits rendered as small RGB PNGs in class folders.

A real, folder-labelled data set with no download: 8x8 grey digits (values 0..16) scaled
to 0..255, enlarged with nearest-neighbour to `size`, saved as RGB. Deterministic: the
first `per_class` samples of each digit (in the data set's order) are taken, the first
`test_per_class` of those go to test/ when splits are asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def digit_images(per_class: int, classes=range(10)) -> list[tuple[int, int, np.ndarray]]:
    """(digit, index in the data set, uint8 8x8 image) for the first per_class of each class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for c in classes:
        idx = np.flatnonzero(d.target == c)[:per_class]
        if len(idx) < per_class:
            raise ValueError(f"digit {c} has only {len(idx)} samples")
        for i in idx:
            out.append((int(c), int(i), np.round(d.images[i] * (255.0 / 16.0)).astype(np.uint8)))
    return out


def write_digits(
    root: Path, per_class: int = 10, *, test_per_class: int = 0, classes=range(10), size: int = 32
) -> dict[Path, str]:
    """Write root/<digit>/NNNN.png (or root/train|test/<digit>/...) and return {path: label}."""
    root = Path(root)
    labels: dict[Path, str] = {}
    seen: dict[int, int] = {}
    for c, i, img in digit_images(per_class, classes):
        n = seen.get(c, 0)
        seen[c] = n + 1
        if test_per_class:
            sub = root / ("test" if n < test_per_class else "train") / str(c)
        else:
            sub = root / str(c)
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:04d}.png"
        rgb = Image.fromarray(img, mode="L").resize((size, size), Image.NEAREST).convert("RGB")
        rgb.save(path)
        labels[path.resolve()] = str(c)
    return labels
