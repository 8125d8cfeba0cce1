"""`vecsearch embed --out DIR`: vectors as Parquet shards for very large jobs, no index touched."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import app, errors_to_exit
from .options import (
    BackboneOpt,
    BatchSizeOpt,
    EngineOpt,
    GpusPerWorkerOpt,
    JsonOpt,
    PrecisionOpt,
    QuietOpt,
    RayAddressOpt,
    SeedOpt,
    WeightsOpt,
    WorkersOpt,
    engine_options,
    model_options,
)
from .output import model_status, print_json, progress_bar, say

SHARD_SIZE = 20_000  # embed_job.SHARD_SIZE, repeated so --help imports nothing heavy


@app.command("embed")
def embed_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files and folders (walked recursively).", show_default=False)],
    out: Annotated[
        Path,
        typer.Option(
            "--out", metavar="DIR", help="Folder for the Parquet shards (created; a re-run resumes).", show_default=False
        ),
    ],
    backbone: BackboneOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    precision: PrecisionOpt = None,
    shard_size: Annotated[
        int, typer.Option("--shard-size", min=1, help="Files per shard; a crash redoes at most one shard.")
    ] = SHARD_SIZE,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    workers: WorkersOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed images into Parquet shards in DIR (path, file facts, vector or failure reason); load them with `import DIR`."""
    started = time.perf_counter()  # the time reported is the whole command's, model load included
    with errors_to_exit(), model_status(not json_out):
        from ..api import embed_to_shards

        engine_kw = engine_options(engine, ray_address, gpus_per_worker, workers)
        precision_kw: dict[str, Any] = {"precision": precision} if precision is not None else {}  # none: the default
        with progress_bar("Embedding", quiet or json_out) as update:
            summary = embed_to_shards(
                paths,
                out,
                batch_size=batch_size,
                shard_size=shard_size,
                progress=update,
                **precision_kw,
                **model_options(backbone, weights, seed),
                **engine_kw,
            )
        summary.seconds = round(time.perf_counter() - started, 3)
        if json_out:
            print_json(summary.to_dict())
            return
        say(
            f"Embedded {summary.embedded}, failed {summary.failed} of {summary.files} files into {summary.shards} "
            f"shard{'s' if summary.shards != 1 else ''} ({summary.written} written, {summary.kept} already done, "
            f"{summary.removed} outdated removed) in {summary.seconds:.1f}s -> {summary.out}"
        )
        if summary.written or summary.kept:
            say(f"Load them with: vecsearch import {summary.out}")
