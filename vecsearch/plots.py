"""PNG figures (matplotlib, Agg backend: no display needed). Each function writes one file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence


def _pyplot():
    from .extras import require_extra

    require_extra("plot", needed_for="Plotting")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """Write the figure as a PNG and free it; a path that cannot be written is a VecsearchError."""
    from .errors import VecsearchError

    path = Path(path)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as e:  # a missing folder, no permission, an unknown extension
        raise VecsearchError(f"Cannot write the plot to {path}: {e}") from e
    finally:
        plt.close(fig)
    return path


def training_curves(history: dict, path: str | os.PathLike) -> Path:
    """Training and validation accuracy and loss per epoch, side by side (the tutorials' figure)."""
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in ((acc_ax, "accuracy", "Accuracy"), (loss_ax, "loss", "Loss")):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="." if len(values) <= 40 else None, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(plt, fig, path)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def plot_text(text: str) -> str:
    """`text` as matplotlib draws it verbatim: `$` would start mathtext, control characters are shown escaped."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)
    return text.replace("$", r"\$")


def short_labels(paths: Sequence[str]) -> list[str]:
    """For each path the shortest suffix of its parts that no other path ends with
    (`a/img.jpg` and `b/img.jpg`, not `img.jpg` twice); the same path given again is
    told apart by a ` (2)`."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    labels = []
    for mine in parts:
        others = [q for q in parts if q != mine]
        n = 1
        while n < len(mine) and any(q[-n:] == mine[-n:] for q in others):
            n += 1
        labels.append("/".join(mine[-n:]) if n < len(mine) else str(Path(*mine)))
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} ({seen[label]})"
    return labels


def similarity_matrix(paths: Sequence[str], sims, path: str | os.PathLike) -> Path:
    """Heatmap of a cosine-similarity matrix, each image named by its shortest unique path suffix."""
    import numpy as np

    plt = _pyplot()
    sims = np.asarray(sims, dtype=float)
    names = [plot_text(label) for label in short_labels(paths)]
    n = len(names)
    size = max(4.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    # Scale colours to the values present: backbone vectors often all sit above 0.9, and
    # on a 0..1 scale their differences would vanish.
    lo = float(sims.min())
    lo = lo if lo < 1.0 else 0.0
    im = ax.imshow(sims, cmap="viridis", vmin=lo, vmax=1.0)
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=names)
    if n <= 15:
        digits = 2 if lo < 0.9 else 4
        for i in range(n):
            for j in range(n):
                bright = (sims[i, j] - lo) / max(1e-12, 1.0 - lo) > 0.6
                ax.text(
                    j, i, f"{sims[i, j]:.{digits}f}", ha="center", va="center", fontsize=8, color="black" if bright else "white"
                )
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_title("Cosine similarity")
    return _save(plt, fig, path)


def confusion_matrix(classes: Sequence[str], matrix, path: str | os.PathLike, title: str = "Confusion matrix") -> Path:
    """Counts of true (rows) against predicted (columns) classes, annotated, as one PNG."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(matrix, dtype=int)
    n = len(classes)
    size = max(4.0, 0.5 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, int(m.max()) if m.size else 1))
    names = [plot_text(c) for c in classes]
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    half = m.max() / 2 if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8, color="white" if m[i, j] > half else "black")
    fig.colorbar(im, ax=ax, label="images")
    ax.set_title(title)
    return _save(plt, fig, path)
