"""vecsearch: image embeddings, similarity search and classifiers on frozen Keras backbones.

Importing this package is cheap: Keras/TensorFlow, FAISS and scikit-learn load on first use.
Start at `open_index`: the `VecIndex` it returns has every feature as a method.
"""

from .api import Hit, VecIndex
from .backbones import REGISTRY, Backbone, BackboneSpec, WeightsSpec, load_backbone, register
from .classifiers import Classification
from .config import VERSION as __version__  # noqa: F401  (a dunder, not one of __all__'s names)
from .errors import (
    BadImageError,
    BadLabelsError,
    BadVectorError,
    BadVectorFileError,
    ClassifierNotFoundError,
    DatabaseDamagedError,
    IndexCorruptError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    InputNotFoundError,
    MissingExtraError,
    NoImagesError,
    NoLabelsError,
    NoTextTowerError,
    NotIndexedError,
    RayClusterError,
    ReadOnlyIndexError,
    RequestDroppedError,
    ServiceBusyError,
    StructureError,
    UnknownBackboneError,
    UnknownClassError,
    UploadTooLargeError,
    VecsearchError,
    WeightsUnavailableError,
)
from .explain import Explanation
from .finetune import HeadParams
from .health import IndexCheck, check_index
from .indexer import FailedImage, IndexSummary, RemoveSummary
from .opening import open_index

__all__ = [
    # the index object, and a served one over HTTP
    "open_index",
    "VecIndex",
    "Client",
    "check_index",
    "IndexCheck",
    "Hit",
    "IndexSummary",
    "RemoveSummary",
    "FailedImage",
    "Classification",
    "Explanation",
    "HeadParams",
    # backbones
    "REGISTRY",
    "Backbone",
    "BackboneSpec",
    "WeightsSpec",
    "load_backbone",
    "register",
    # errors
    "VecsearchError",
    "BadImageError",
    "BadLabelsError",
    "BadVectorError",
    "BadVectorFileError",
    "DatabaseDamagedError",
    "ClassifierNotFoundError",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "InputNotFoundError",
    "MissingExtraError",
    "NoImagesError",
    "NoLabelsError",
    "NoTextTowerError",
    "NotIndexedError",
    "RayClusterError",
    "ReadOnlyIndexError",
    "RequestDroppedError",
    "ServiceBusyError",
    "StructureError",
    "UnknownBackboneError",
    "UnknownClassError",
    "UploadTooLargeError",
    "WeightsUnavailableError",
]


def __getattr__(name: str):
    """`Client` on first use: it needs httpx (the `client` extra), which a local index does not."""
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'vecsearch' has no attribute {name!r}")
