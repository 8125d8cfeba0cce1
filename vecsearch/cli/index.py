"""`vecsearch index`, `query`, `stats`, `export`: building an index and searching it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_K
from ..errors import VecsearchError
from ..labels import DEFAULT_TOP as DEFAULT_LABEL_TOP
from ..index_types import NAMED_TYPES, format_bytes
from ._common import (EngineOpt, GpusPerWorkerOpt, IndexOpt, JsonOpt, PrecisionOpt, QuietOpt, RayAddressOpt, WorkersOpt, app, engine_options,
                      errors_to_exit, model_options, open_index, print_json, progress_bar, say, warn)


IndexTypeOpt = Annotated[Optional[str], typer.Option(
    "--index-type", show_default=False,
    help=f"Search structure: {', '.join(NAMED_TYPES)}, or a FAISS factory string (e.g. IVF1024,PQ32x8). "
         "flat (the default for a new index) is exact; auto picks by size and --max-memory; another type "
         "than the index has converts it.")]
MaxMemoryOpt = Annotated[Optional[str], typer.Option(
    "--max-memory", metavar="SIZE", show_default=False,
    help="RAM budget for the search structure, e.g. 4GB (default 4GB); auto chooses within it.")]


@app.command("index")
def index_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files and folders (walked recursively).", show_default=False)],
    index: IndexOpt = None,
    backbone: Annotated[Optional[str], typer.Option(help="resnet50 (default for a new index), xception, inception_v3, vgg16, mobilenet.", show_default=False)] = None,
    weights: Annotated[Optional[str], typer.Option(help="imagenet (default), none (seeded random init), or a Keras weights FILE.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random init for --weights none.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per model call (default 32 on a CPU; 128 on a GPU, 256 with --precision mixed).", show_default=False)] = None,
    precision: PrecisionOpt = None,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    label: Annotated[bool, typer.Option("--label", help="Also store the top ImageNet classes of images that have none yet (see `vecsearch label`).")] = False,
    top: Annotated[int, typer.Option("--top", min=1, max=1000, help="With --label: ImageNet classes kept per image.")] = DEFAULT_LABEL_TOP,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    workers: WorkersOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed new and changed images into the index; drop entries whose files are gone."""
    with errors_to_exit():
        engine_kw = engine_options(engine, ray_address, gpus_per_worker, workers)
        with progress_bar("Building the search structure", quiet or json_out) as building:
            ix = open_index(index, batch_size=batch_size, index_type=index_type, max_memory=max_memory,
                            progress=building, precision=precision, **model_options(backbone, weights, seed), **engine_kw)
        with ix:
            with progress_bar("Embedding", quiet or json_out) as update:
                summary = ix.add(paths, progress=update)
            check = ix.precision_check
            labelled, label_error = None, None
            if label:
                try:
                    labelled = ix.label(top=top, only_missing=True).labelled
                except VecsearchError as e:  # the index is done: report it, then why labels are not
                    label_error = e
        if json_out:
            print_json(summary.to_dict() | {"index": str(ix.directory)} | ({"labelled": labelled} if label else {})
                       | ({"precision_check": check.to_dict()} if check is not None else {}))
            if label_error is not None:
                raise label_error
            return
        say(f"Indexed {summary.indexed}, unchanged {summary.unchanged}, reused {summary.reused}, "
            f"removed {summary.removed}, failed {len(summary.failed)} of {summary.total} images "
            f"in {summary.seconds:.1f}s -> {ix.directory}")
        if check is not None and check.images:
            say(f"  {check.precision} precision accepted on this {check.index_precision} index: re-embedded "
                f"{check.images} indexed images, min cosine {check.min_cosine:.5f} with the stored vectors")
        for f in summary.failed:
            warn(f"  failed: {f.path}: {f.reason}")
        for p in summary.removed_paths:
            warn(f"  removed: {p}")
        if summary.repaired:
            warn(f"  {summary.repaired} stored vectors were damaged on disk and were dropped; those under the "
                 "folders indexed now were embedded again")
        if summary.retrained:
            warn(f"  the collection outgrew its {ix.info.index_type} search structure, which was rebuilt "
                 f"for {len(ix)} vectors")
        if label_error is not None:
            raise label_error
        if labelled is not None:
            say(f"Labelled {labelled} images with their top {top} ImageNet classes")


@app.command()
def query(
    image: Annotated[Optional[Path], typer.Argument(help="An image file (an indexed path reuses its stored vector).", show_default=False)] = None,
    index: IndexOpt = None,
    k: Annotated[Optional[int], typer.Option("--k", "-k", help=f"How many neighbours (default {DEFAULT_K}; with --label: at most this many, default all).", show_default=False)] = None,
    label: Annotated[Optional[str], typer.Option("--label", help="Instead: list images whose stored ImageNet top-k holds this class (name or WordNet id).", show_default=False)] = None,
    explain: Annotated[Optional[Path], typer.Option("--explain", metavar="DIR", help="Also write one PNG per result into DIR: why it is similar, the query's heatmap beside the result's.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the k indexed images most similar to IMAGE (cosine similarity), or those labelled --label NAME."""
    with errors_to_exit():
        if k is not None and k < 1:
            raise VecsearchError(f"--k must be at least 1, got {k}.")
        if label is not None:
            if image is not None:
                raise VecsearchError("Give either IMAGE or --label NAME, not both.")
            if explain is not None:
                raise VecsearchError("--explain goes with a search by IMAGE, not --label.")
            from .labels import print_label_hits  # imported here: labels' commands register after these

            with open_index(index, create=False) as ix:
                print_label_hits(ix.search_labels(label, limit=k), json_out)
            return
        if image is None:
            raise VecsearchError("Give an IMAGE to search with, or --label NAME.")
        with open_index(index, create=False) as ix:
            hits = ix.search(image, DEFAULT_K if k is None else k)
            written = ix.explain_hits_to(image, hits, explain) if explain is not None else None
        if json_out:
            rows = [h.to_dict() for h in hits]
            if written is not None:
                rows = [row | {"explain": str(w)} for row, w in zip(rows, written)]
            print_json(rows)
            return
        # Plain lines, never truncated: people copy these paths.
        say(f"{'rank':>4}  {'score':>6}  path")
        for h in hits:
            say(f"{h.rank:>4}  {h.score:6.4f}  {h.path}")
        if written is not None:
            say(f"why similar: {len(written)} heatmap{'s' if len(written) != 1 else ''} (query | result) written to {explain}")


@app.command()
def stats(index: IndexOpt = None, json_out: JsonOpt = False) -> None:
    """Counts, backbone, weights, index type and sizes of an index."""
    with errors_to_exit():
        with open_index(index, create=False) as ix:
            s = ix.stats()
            failed = [{"path": r.path, "reason": r.reason} for r in ix.failed()]
        if json_out:
            print_json(s | {"failed_images": failed})
            return
        width = max(map(len, s))
        for key, value in s.items():
            say(f"{key:<{width}}  {value}")


@app.command()
def export(
    out_file: Annotated[Path, typer.Argument(metavar="OUT.npz|OUT.parquet", help="Where to write; the suffix decides the format.", show_default=False)],
    index: IndexOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write every indexed vector with its path, norm, file facts and model, as .npz or Parquet."""
    with errors_to_exit():
        with open_index(index, create=False) as ix:
            with progress_bar("Exporting", quiet or json_out) as update:
                n = ix.export(out_file, progress=update)
        if json_out:
            print_json({"exported": n, "file": str(out_file)})
            return
        say(f"Exported {n} vectors to {out_file}")


@app.command("import")
def import_cmd(
    source: Annotated[Path, typer.Argument(metavar="FILE|DIR", help="A .npz or .parquet file written by `export` (or `embed`), or a folder of them.", show_default=False)],
    index: IndexOpt = None,
    unchecked: Annotated[bool, typer.Option("--unchecked", help="Accept files that name no model (their dimension is still checked).")] = False,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Add precomputed vectors to the index; paths are taken as given (the next `index` run reconciles them)."""
    with errors_to_exit():
        with open_index(index, index_type=index_type, max_memory=max_memory) as ix:
            with progress_bar("Importing", quiet or json_out) as update:
                summary = ix.import_vectors(source, unchecked=unchecked, progress=update)
        if json_out:
            print_json(summary.to_dict() | {"index": str(ix.directory)})
            return
        failed = f", {summary.failed} failed files" if summary.failed else ""
        say(f"Imported {summary.imported} vectors ({summary.replaced} replaced){failed} from {len(summary.files)} "
            f"file{'s' if len(summary.files) != 1 else ''} in {summary.seconds:.1f}s -> {ix.directory}")


@app.command()
def reindex(
    index: IndexOpt = None,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rebuild the search structure from the stored vectors (retrain it), optionally as another type."""
    with errors_to_exit():
        with open_index(index, create=False) as ix:
            with progress_bar("Rebuilding", quiet or json_out) as update:
                spec = ix.reindex(index_type=index_type, max_memory=max_memory, progress=update)
        if json_out:
            print_json(spec.to_dict())
            return
        what = spec.factory or "exact scan (flat)"
        recall = f", recall@10 {spec.recall:.3f}" if spec.recall is not None else ""
        say(f"Rebuilt the {spec.index_type} search structure: {what} for {spec.built_for} vectors, "
            f"{format_bytes(spec.memory_bytes)}{recall}; search parameters {spec.params or '-'}")
