"""Where an index lives and the settings that have environment overrides. No I/O at import."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

try:
    VERSION = metadata.version("vecsearch")  # one place: pyproject.toml's version, as installed
except metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    VERSION = "0+unknown"

ENV_INDEX = "VECSEARCH_INDEX"
DB_NAME = "index.db"
VECTORS_NAME = "vectors.faiss"
LOCK_NAME = "write.lock"

# Caps on untrusted images, one constant per meaning.
MAX_IMAGE_PIXELS = 120_000_000
"""Largest image file indexed or queried, in pixels (a 12 MP photo is 12M; bombs are far larger)."""
MAX_IMAGE_BYTES = 256 * 1024 * 1024
"""Largest image file read, in bytes."""
MAX_UPLOAD_PIXELS = 40_000_000
"""Largest image the HTTP service decodes, in pixels: uploads, and the thumbnails it makes
(stricter: anyone may send a request; a big JPEG counts at the reduced scale it is decoded at)."""
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
"""Largest uploaded file the HTTP service reads; bigger ones get 413 before they are read."""
MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""Largest request body (several files in one request); bigger bodies get 413 before they are read."""
MAX_FILES = 64
"""Most files one request may upload (search, embed, add): one model call's worth, a bounded decode."""
MAX_READ_SECONDS = 60.0
"""Longest time reading one file may take (a stalled network share); then it is listed as failed."""
DECODE_MEMORY_BUDGET = 1024 * 1024 * 1024
"""Bytes that image decodes of one process may hold at once (at ~5 bytes a decoded pixel); a
decode waits for room, so peak memory is predictable however many threads or requests decode."""

# Caps on vector files given to `import`, checked from the file's headers (npz) or metadata
# (Parquet) before anything is loaded: a hostile or broken file is refused in one line
# instead of taking the machine's memory. Rows are streamed in batches, so the row count
# itself needs no cap; what is capped is what one row, one batch or the metadata may hold.
MAX_IMPORT_PATH_CHARS = 4096
"""Longest path a vector file may hold, in characters (Linux's PATH_MAX is 4096 bytes)."""
MAX_IMPORT_DIM = 65536
"""Widest vector a vector file may hold (the widest backbone here is 2048-d)."""
MAX_IMPORT_META_BYTES = 1024 * 1024
"""Largest model metadata (the JSON naming backbone, weights, dimension) a vector file may hold."""
MAX_IMPORT_BATCH_BYTES = 512 * 1024 * 1024
"""Bytes of one `.npz` import batch: the rows (vector, path, file facts) read at once."""
MAX_IMPORT_ROW_GROUP_BYTES = 2 * 1024 * 1024 * 1024
"""Largest Parquet row group, uncompressed, as its metadata says: pyarrow reads a row group
whole, so a larger one (or a compression bomb) is refused; rewrite such a file with smaller
row groups (`row_group_size=` of pyarrow's writer). An export writes ~300 MB ones."""

DEFAULT_K = 10
"""Neighbours a search returns unless told otherwise."""


def default_index_dir() -> Path:
    """`$XDG_DATA_HOME/vecsearch/index`, i.e. `~/.local/share/vecsearch/index` on most systems."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "vecsearch" / "index"


def resolve_index_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`--index DIR` wins, then `$VECSEARCH_INDEX`, then the default."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_INDEX)
    if env:
        return Path(env).expanduser()
    return default_index_dir()


CPU_BATCH_SIZE = 32
"""Images per model call on a CPU (the default before batch sizes followed the device)."""
GPU_BATCH_SIZES = {"float32": 128, "mixed": 256}
"""...and on a GPU, where a batch must be large to fill the device (mixed halves activations)."""


def gpu_present() -> bool:
    """Whether this machine has a usable NVIDIA or AMD GPU, without importing any ML framework.

    Reads the kernel drivers' device nodes (microseconds); CUDA_VISIBLE_DEVICES="" or "-1"
    hides them as CUDA does. A GPU that the installed Keras backend cannot use (tensorflow-cpu)
    still counts: only the batch size follows this, which such a run can override.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    try:
        with os.scandir("/proc/driver/nvidia/gpus") as entries:
            if any(entries):
                return True
    except OSError:
        pass
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/kfd")


def default_batch_size(precision: str = "float32") -> int:
    """Images per model call: `$VECSEARCH_BATCH_SIZE`, else by device (GPU_BATCH_SIZES) and precision."""
    env = os.environ.get("VECSEARCH_BATCH_SIZE")
    if env:
        return int(env)
    return GPU_BATCH_SIZES.get(precision, GPU_BATCH_SIZES["float32"]) if gpu_present() else CPU_BATCH_SIZE


SERVE_CPU_BATCH = 8
"""Most images one served model call takes on a CPU: a call cannot be interrupted, and on a CPU 8
cost about what 32 do per image while a request arriving behind them waits a quarter as long
(docs/speed.md, `scripts/bench_serve.py`). On a GPU the model's batch size."""


def serve_batch_size(precision: str = "float32") -> int:
    """The micro-batcher's largest batch: `$VECSEARCH_BATCH_SIZE`, else the GPU batch size, else SERVE_CPU_BATCH."""
    if os.environ.get("VECSEARCH_BATCH_SIZE") or gpu_present():
        return default_batch_size(precision)
    return SERVE_CPU_BATCH


def default_workers() -> int:
    """Decode threads: Pillow releases the GIL, so one per core (at least two) keeps the model fed."""
    return max(2, os.cpu_count() or 2)
