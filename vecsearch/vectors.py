"""Small vector math shared by the writers and the searchers: unit rows and their lengths.

The FAISS structure wrapper lives in `search/structure.py`; this module stays free of FAISS.
"""

from __future__ import annotations

import numpy as np


def normalize(vectors, dtype=np.float32) -> np.ndarray:
    """Rows (the last axis) scaled to unit L2 norm, so inner product equals cosine.

    Zero rows stay zero instead of becoming NaN. Norms are computed in float64 so that
    large components cannot overflow to inf; `dtype=np.float64` keeps that precision
    (the k-NN classifier's exact re-ranking wants it).
    """
    x = np.asarray(vectors)
    norms = np.linalg.norm(x.astype(np.float64, copy=False), axis=-1, keepdims=True)
    out = np.zeros(x.shape, dtype=np.float64)
    np.divide(x, norms, out=out, where=norms > 0)
    return np.ascontiguousarray(out, dtype=dtype)


def norms(vectors) -> np.ndarray:
    """L2 length of each row (float32), as stored beside the unit vectors."""
    return np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=-1).astype(np.float32)
