"""The options several commands share (Typer `Annotated` types), and the `open_index` arguments they become.

A command module declares its own one-off options; the ones here are spelled, and mean, the
same on every command that takes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import VecsearchError
from ..search import NAMED_TYPES

IndexOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--index", help="Index folder (default: $VECSEARCH_INDEX, else ~/.local/share/vecsearch/index).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
JsonlOpt = Annotated[bool, typer.Option("--jsonl", help="Print JSON lines: one object per line, for streaming and jq.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
# The model flags of the commands that embed (`index`, `embed`).
BackboneOpt = Annotated[
    Optional[str],
    typer.Option(
        help="resnet50 (the default; an existing index keeps the one it records), xception, inception_v3, vgg16, mobilenet.",
        show_default=False,
    ),
]
WeightsOpt = Annotated[
    Optional[str],
    typer.Option(help="imagenet (default), none (seeded random init), or a Keras weights FILE.", show_default=False),
]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed of the random init for --weights none.", show_default=False)]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size",
        min=1,
        help="Images per model call (default 32 on a CPU; 128 on a GPU, 256 with --precision mixed).",
        show_default=False,
    ),
]
PrecisionOpt = Annotated[
    Optional[str],
    typer.Option(
        "--precision",
        metavar="float32|mixed",
        show_default=False,
        help="Compute precision: float32, or mixed (float16 on a GPU, bfloat16 on a CPU; vectors are stored as float32). "
        "Default: what the index records (float32 for a new one); the other one is accepted only if its vectors "
        "agree with a few stored ones (cosine >= 0.999).",
    ),
]


# -- the search structure (`index`, `import`, `reindex`) ------------------------------------
IndexTypeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--index-type",
        show_default=False,
        help=f"Search structure: {', '.join(NAMED_TYPES)}, or a FAISS factory string (e.g. IVF1024,PQ32x8). "
        "flat (the default for a new index) is exact; auto picks by size and --max-memory; another type "
        "than the index has converts it.",
    ),
]
MaxMemoryOpt = Annotated[
    Optional[str],
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        show_default=False,
        help="RAM budget for the search structure, e.g. 4GB (default 4GB); auto chooses within it.",
    ),
]


# -- where embedding runs (`index`, `embed`) ----------------------------------------------------
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        metavar="local|ray",
        help="Where images are embedded: local (this process) or ray (a Ray cluster; needs the ray extra, and says how to "
        "install it).",
    ),
]
RayAddressOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray-address",
        metavar="ADDR",
        show_default=False,
        help="With --engine ray: the cluster to join (e.g. 10.0.0.5:6379, or auto); default: start a local Ray.",
    ),
]
GpusPerWorkerOpt = Annotated[
    Optional[float],
    typer.Option(
        "--gpus-per-worker",
        min=0,
        show_default=False,
        help="With --engine ray: GPUs each model actor reserves (default 1 where the cluster has GPUs, else 0).",
    ),
]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        min=1,
        show_default=False,
        help="With --engine ray: model actors (default one per GPU, else one per 8 CPUs); locally: decode threads.",
    ),
]


def engine_options(engine: str, ray_address: str | None, gpus_per_worker: float | None, workers: int | None) -> dict:
    """The `open_index` arguments for the engine flags; the Ray flags need --engine ray."""
    if engine != "ray" and (ray_address is not None or gpus_per_worker is not None):
        raise VecsearchError("--ray-address and --gpus-per-worker go with --engine ray.")
    return {"engine": engine, "ray_address": ray_address, "gpus_per_worker": gpus_per_worker, "workers": workers}


def model_options(backbone: str | None, weights: str | None, seed: int | None) -> dict:
    """The `open_index` arguments for the model flags the user gave (none given: the index decides)."""
    return {k: v for k, v in (("backbone", backbone), ("weights", weights), ("seed", seed)) if v is not None}
