"""vecsearch: image embeddings, similarity search and classifiers on frozen Keras backbones.

Importing this package is cheap: Keras/TensorFlow and FAISS load on first use.
"""

from .api import FailedImage, Hit, IndexSummary, VecIndex, open_index
from .backbones import REGISTRY, Backbone, BackboneSpec, WeightsSpec, load_backbone, register
from .errors import (
    BadImageError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    InputNotFoundError,
    NoImagesError,
    NotIndexedError,
    UnknownBackboneError,
    VecsearchError,
    WeightsUnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "open_index",
    "VecIndex",
    "Hit",
    "IndexSummary",
    "FailedImage",
    "REGISTRY",
    "Backbone",
    "BackboneSpec",
    "WeightsSpec",
    "load_backbone",
    "register",
    "VecsearchError",
    "BadImageError",
    "IndexCorruptError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "InputNotFoundError",
    "NoImagesError",
    "NotIndexedError",
    "UnknownBackboneError",
    "WeightsUnavailableError",
]
