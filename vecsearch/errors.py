"""Exceptions raised by vecsearch. The CLI and the HTTP service turn them into messages."""


class VecsearchError(Exception):
    """Base class of every error vecsearch raises on purpose."""


class BadImageError(VecsearchError):
    """One image could not be read; `reason` says why in a few words."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class InputNotFoundError(VecsearchError):
    """A path given to index or query does not exist."""


class NoImagesError(VecsearchError):
    """The paths given hold no image files."""


class IndexNotFoundError(VecsearchError):
    """No index exists at the given location."""


class IndexMismatchError(VecsearchError):
    """The requested backbone or weights differ from those that built the index."""


class IndexLockedError(VecsearchError):
    """Another process is writing to the index; one writer at a time."""


class IndexCorruptError(VecsearchError):
    """The vector file and the database disagree in a way that cannot be repaired."""


class UnknownBackboneError(VecsearchError):
    """The backbone name is not in the registry."""


class WeightsUnavailableError(VecsearchError):
    """Pretrained weights could not be downloaded or loaded."""


class NotIndexedError(VecsearchError):
    """An id or path that is not in the index."""


class NoLabelsError(VecsearchError):
    """The index has no user labels to train on."""


class BadLabelsError(VecsearchError):
    """The labels cannot train or evaluate a classifier (one class, a class of one image)."""


class ClassifierNotFoundError(VecsearchError):
    """No trained classifier of that name in the index."""


class UnknownClassError(VecsearchError):
    """A name or WordNet id that is not one of the 1000 ImageNet classes."""


class UploadTooLargeError(VecsearchError):
    """An upload to the HTTP service is over its size cap."""
