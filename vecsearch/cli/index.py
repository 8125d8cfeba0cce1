"""`vecsearch index`, `query`, `stats`, `export`: building an index and searching it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_K
from ..errors import VecsearchError
from ..extras import require_extra
from ..labels import DEFAULT_TOP as DEFAULT_LABEL_TOP
from ..search import format_bytes
from ._common import app, errors_to_exit, open_index, random_weights_warning
from .options import (
    BackboneOpt,
    BatchSizeOpt,
    EngineOpt,
    GpusPerWorkerOpt,
    IndexOpt,
    IndexTypeOpt,
    JsonlOpt,
    JsonOpt,
    MaxMemoryOpt,
    PrecisionOpt,
    QuietOpt,
    RayAddressOpt,
    SeedOpt,
    WeightsOpt,
    WorkersOpt,
    engine_options,
    model_options,
)
from .output import json_mode, model_status, print_json, print_rows, print_table, progress_bar, say, warn


@app.command("index")
def index_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files and folders (walked recursively).", show_default=False)],
    index: IndexOpt = None,
    backbone: BackboneOpt = None,
    weights: WeightsOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    precision: PrecisionOpt = None,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    label: Annotated[
        bool,
        typer.Option("--label", help="Also store the top ImageNet classes of images that have none yet (see `vecsearch label`)."),
    ] = False,
    top: Annotated[
        int, typer.Option("--top", min=1, max=1000, help="With --label: ImageNet classes kept per image.")
    ] = DEFAULT_LABEL_TOP,
    exclude: Annotated[
        Optional[list[str]],
        typer.Option(
            "--exclude",
            metavar="GLOB",
            help="Skip (and drop from the index) files whose name, a folder name on their path, their path relative to PATH or their absolute path matches GLOB (e.g. '*.tmp', 'thumbs', 'raw/*'). Repeatable; remembered by the index for later runs (see `stats`).",
            show_default=False,
        ),
    ] = None,
    clear_exclude: Annotated[
        bool, typer.Option("--clear-exclude", help="Forget the remembered --exclude globs first (those given now are kept).")
    ] = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    workers: WorkersOpt = None,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; failed images only as a count.")] = False,
) -> None:
    """Embed new and changed images into the index; drop entries whose files are gone (or are excluded)."""
    started = time.perf_counter()  # the time reported is the whole command's: opening, the model, labels
    with errors_to_exit(), model_status(not json_out):
        engine_kw = engine_options(engine, ray_address, gpus_per_worker, workers)
        with progress_bar("Building the search structure", quiet or json_out) as building:
            ix = open_index(
                index,
                batch_size=batch_size,
                index_type=index_type,
                max_memory=max_memory,
                progress=building,
                precision=precision,
                **model_options(backbone, weights, seed),
                **engine_kw,
            )
        with ix:
            if clear_exclude:
                ix.set_exclude([])
            with progress_bar("Embedding", quiet or json_out) as update:
                summary = ix.add(paths, exclude=exclude or (), progress=update)
            globs = ix.exclude
            check = ix.precision_check
            labelled, label_error, label_warning = None, None, None
            if label:
                try:
                    labelled = ix.label(top=top, only_missing=True).labelled
                    label_warning = random_weights_warning(ix, "the ImageNet labels stored")
                except VecsearchError as e:  # the index is done: report it, then why labels are not
                    label_error = e
        seconds = round(time.perf_counter() - started, 3)
        if json_out:
            print_json(
                summary.to_dict()
                | {"seconds": seconds, "index": str(ix.directory), "exclude": globs}
                | ({"labelled": labelled} if label else {})
                | ({"warning": label_warning} if label_warning else {})
                | ({"precision_check": check.to_dict()} if check is not None else {})
            )
            if label_error is not None:
                raise label_error
            return
        say(
            f"Indexed {summary.indexed}, unchanged {summary.unchanged}, reused {summary.reused}, "
            f"removed {summary.removed}, failed {len(summary.failed)} of {summary.total} images "
            f"in {seconds:.1f}s -> {ix.directory}"
        )
        if globs:
            say(f"  excluding (remembered; --clear-exclude forgets): {' '.join(globs)}")
        if check is not None and check.images:
            say(
                f"  {check.precision} precision accepted on this {check.index_precision} index: re-embedded "
                f"{check.images} indexed images, min cosine {check.min_cosine:.5f} with the stored vectors"
            )
        _report_failures(summary.failed, quiet)
        for p in summary.removed_paths:
            warn(f"  removed: {p}")
        if summary.repaired:
            warn(
                f"  {summary.repaired} stored vectors were damaged on disk and were dropped; those under the "
                "folders indexed now were embedded again"
            )
        if summary.retrained:
            warn(f"  the collection outgrew its {ix.info.index_type} search structure, which was rebuilt for {len(ix)} vectors")
        if label_error is not None:
            raise label_error
        if labelled is not None:
            say(f"Labelled {labelled} images with their top {top} ImageNet classes")
        if label_warning:
            warn(f"Warning: {label_warning}")


def _report_failures(failed, quiet: bool) -> None:
    """This run's new failures, one a line (none under --quiet); earlier ones only as a count."""
    new = [f for f in failed if f.new]
    if not quiet:
        for f in new:
            warn(f"  failed: {f.path}: {f.reason}")
    shown = 0 if quiet else len(new)
    if len(failed) > shown:
        n = len(failed) if quiet else len(failed) - len(new)
        images = f"image{'s' if n != 1 else ''}"
        what = (
            f"{n} {images} failed ({len(new)} new in this run)"
            if quiet
            else f"{n} more {images} failed in earlier runs and unchanged since"
        )
        warn(f"  {what}: `vecsearch list --failed` (or `vecsearch stats --json`) lists them with reasons")


@app.command()
def query(
    image: Annotated[
        Optional[Path], typer.Argument(help="An image file (an indexed path reuses its stored vector).", show_default=False)
    ] = None,
    index: IndexOpt = None,
    k: Annotated[
        Optional[int],
        typer.Option(
            "--k",
            "-k",
            help=f"How many neighbours (default {DEFAULT_K}; with --imagenet: at most this many, default all).",
            show_default=False,
        ),
    ] = None,
    under: Annotated[
        Optional[Path], typer.Option("--under", metavar="DIR", help="Only results inside this folder.", show_default=False)
    ] = None,
    label: Annotated[
        Optional[str],
        typer.Option(
            "--label",
            metavar="L",
            help="Only results taught class L (see `teach`). Without IMAGE: the old spelling of --imagenet.",
            show_default=False,
        ),
    ] = None,
    predicted: Annotated[
        Optional[str],
        typer.Option(
            "--predicted",
            metavar="L",
            help="Only results the newest classifier (or --classifier) predicted as L.",
            show_default=False,
        ),
    ] = None,
    classifier: Annotated[
        Optional[str],
        typer.Option(
            "--classifier",
            metavar="NAME",
            help="With --predicted: whose predictions (default: the newest classifier).",
            show_default=False,
        ),
    ] = None,
    min_score: Annotated[
        Optional[float],
        typer.Option(
            "--min-score",
            metavar="S",
            help="Only results at least this similar (cosine, -1..1); fewer than k may come back.",
            show_default=False,
        ),
    ] = None,
    imagenet: Annotated[
        Optional[str],
        typer.Option(
            "--imagenet",
            metavar="NAME",
            help="Instead of a search: list images whose stored ImageNet top-k holds this class (name or WordNet id).",
            show_default=False,
        ),
    ] = None,
    text: Annotated[
        Optional[str],
        typer.Option(
            "--text",
            metavar="WORDS",
            help='Instead of IMAGE: search by words ("a red car"), with a CLIP or SigLIP index.',
            show_default=False,
        ),
    ] = None,
    explain: Annotated[
        Optional[Path],
        typer.Option(
            "--explain",
            metavar="DIR",
            help="Also write one PNG per result into DIR: why it is similar, the query's heatmap beside the result's.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """Show the k indexed images most similar to IMAGE (cosine similarity), or best matching --text WORDS,
    optionally filtered; or, with --imagenet NAME, those whose ImageNet labels hold a class."""
    with errors_to_exit(), model_status(not (json_out or jsonl)):
        mode = json_mode(json_out, jsonl)
        if k is not None and k < 1:
            raise VecsearchError(f"--k must be at least 1, got {k}.")
        if image is None and label is not None and imagenet is None:
            # `query --label NAME` listed ImageNet classes before user classes had filters.
            warn(
                "note: `query --label NAME` without IMAGE is the old spelling of `query --imagenet NAME`; "
                "with an IMAGE, --label filters by a class of your own."
            )
            imagenet, label = label, None
        filters = {
            "--under": under,
            "--label": label,
            "--predicted": predicted,
            "--classifier": classifier,
            "--min-score": min_score,
        }
        given = [flag for flag, value in filters.items() if value is not None]
        if imagenet is not None:
            if image is not None:
                raise VecsearchError("Give either IMAGE (a search) or --imagenet NAME (a listing), not both.")
            if explain is not None or given:
                raise VecsearchError(
                    f"{', '.join(given) or '--explain'} go{'es' if len(given) < 2 else ''} with "
                    "a search by IMAGE, not --imagenet."
                )
            from .labels import print_label_hits  # imported here: labels' commands register after these

            with open_index(index, create=False) as ix:
                print_label_hits(
                    ix.search_labels(imagenet, limit=k), json_out, jsonl=jsonl, name=imagenet, coverage=ix.imagenet_coverage()
                )
            return
        if text is not None:
            if image is not None or imagenet is not None:
                raise VecsearchError("Give one of IMAGE, --text WORDS or --imagenet NAME.")
            if explain is not None:
                raise VecsearchError("--explain goes with a search by IMAGE, not --text.")
        if image is None and text is None:
            raise VecsearchError("Give an IMAGE to search with, --text WORDS, or --imagenet NAME.")
        with open_index(index, create=False) as ix:
            search, query = (ix.search_text, text) if text is not None else (ix.search, image)
            hits = search(
                query,
                DEFAULT_K if k is None else k,
                under=under,
                label=label,
                predicted=predicted,
                classifier=classifier,
                min_score=min_score,
            )
            written = ix.explain_hits_to(image, hits, explain) if explain is not None else None
        rows = [h.to_dict() for h in hits]
        if written is not None:
            rows = [row | {"explain": str(w)} for row, w in zip(rows, written, strict=False)]
        if print_rows(rows, mode):
            return
        # Never truncated nor folded: people copy these paths.
        print_table(["rank", "score", "path"], ((h.rank, f"{h.score:.4f}", h.path) for h in hits), right=["rank", "score"])
        if not hits and given:
            warn(f"No indexed image passes the filters ({', '.join(given)}).")
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
        print_table(["key", "value"], s.items(), header=False)


def _require_parquet(path: Path) -> None:
    """A .parquet file (or a folder holding one) needs pyarrow: say so before an index is opened or created."""
    if path.suffix.lower() == ".parquet" or (path.is_dir() and next(path.rglob("*.parquet"), None) is not None):
        require_extra("parquet", needed_for="Parquet")


@app.command()
def export(
    out_file: Annotated[
        Path,
        typer.Argument(metavar="OUT.npz|OUT.parquet", help="Where to write; the suffix decides the format.", show_default=False),
    ],
    index: IndexOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write every indexed vector with its path, norm, file facts and model, as .npz or Parquet."""
    with errors_to_exit():
        _require_parquet(out_file)
        with open_index(index, create=False) as ix:
            with progress_bar("Exporting", quiet or json_out) as update:
                n = ix.export(out_file, progress=update)
        if json_out:
            print_json({"exported": n, "file": str(out_file)})
            return
        say(f"Exported {n} vectors to {out_file}")


@app.command("import")
def import_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="FILE|DIR",
            help="A .npz or .parquet file written by `export` (or `embed`), or a folder of them.",
            show_default=False,
        ),
    ],
    index: IndexOpt = None,
    unchecked: Annotated[
        bool, typer.Option("--unchecked", help="Accept files that name no model (their dimension is still checked).")
    ] = False,
    index_type: IndexTypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Add precomputed vectors to the index; paths are taken as given (the next `index` run reconciles them)."""
    started = time.perf_counter()
    with errors_to_exit(), model_status(not json_out):
        _require_parquet(source)
        with open_index(index, index_type=index_type, max_memory=max_memory) as ix:
            with progress_bar("Importing", quiet or json_out) as update:
                summary = ix.import_vectors(source, unchecked=unchecked, progress=update)
        summary.seconds = round(time.perf_counter() - started, 3)  # the whole command's, as `index` says
        if json_out:
            print_json(summary.to_dict() | {"index": str(ix.directory)})
            return
        failed = f", {summary.failed} failed files" if summary.failed else ""
        say(
            f"Imported {summary.imported} vectors ({summary.replaced} replaced){failed} from {len(summary.files)} "
            f"file{'s' if len(summary.files) != 1 else ''} in {summary.seconds:.1f}s -> {ix.directory}"
        )


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
        say(
            f"Rebuilt the {spec.index_type} search structure: {what} for {spec.built_for} vectors, "
            f"{format_bytes(spec.memory_bytes)}{recall}; search parameters {spec.params or '-'}"
        )
