"""The `vecsearch` command: parse, show progress, print, map errors to exit codes. No logic.

Core commands live here; each later concept adds its commands from a module of its own
in this package (registered at the bottom), so the CLI stays one module per concept.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console

from ..errors import VecsearchError

app = typer.Typer(
    help="Index photo folders with a frozen ImageNet CNN and find images that look alike.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", help="Index folder (default: $VECSEARCH_INDEX, else ~/.local/share/vecsearch/index).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


@app.callback()
def main(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0) -> None:
    """vecsearch: image embeddings, similarity search and classifiers on frozen Keras backbones."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Library errors become one line on stderr and exit code 1; no traceback for user mistakes."""
    try:
        yield
    except VecsearchError as e:
        err.print(f"[red]Error:[/red] {e}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("Interrupted; what was committed is kept, run the same command again to resume.")
        raise typer.Exit(130) from None


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(description: str, quiet: bool):
    """A rich bar with images/s, or a no-op callback under --quiet.

    The bar appears on the first update with work to show, so a run that fails while
    the model loads, or has nothing to embed, leaves no empty bar behind; the rate counts
    from that first update, not from model start-up.
    """
    if quiet:
        yield None
        return
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    bar = Progress(*columns, console=err, transient=False)
    state: dict = {}

    def update(done: int, total: int) -> None:
        if not total:
            return
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(description, total=total, rate="")
            state["t0"] = time.perf_counter()
        dt = time.perf_counter() - state["t0"]
        rate = f"{done / dt:.1f} img/s" if done and dt > 0 else ""
        bar.update(state["task"], completed=done, total=total, rate=rate)

    try:
        yield update
    finally:
        if "task" in state:
            bar.stop()


def _open(index: Path | None, **kw):
    from ..api import open_index

    return open_index(index, **kw)


@app.command("index")
def index_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files and folders (walked recursively).", show_default=False)],
    index: IndexOpt = None,
    backbone: Annotated[Optional[str], typer.Option(help="resnet50 (default for a new index), xception, inception_v3, vgg16, mobilenet.", show_default=False)] = None,
    weights: Annotated[Optional[str], typer.Option(help="imagenet (default), none (seeded random init), or a Keras weights FILE.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random init for --weights none.", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per model call (default 32).", show_default=False)] = None,
    index_type: Annotated[Optional[str], typer.Option("--index-type", help="flat (exact, default) or hnsw (approximate, fast on 100k+ images); another type than the index has converts it.", show_default=False)] = None,
    label: Annotated[bool, typer.Option("--label", help="Also store the top ImageNet classes of images that have none yet (see `vecsearch label`).")] = False,
    top: Annotated[int, typer.Option("--top", min=1, max=1000, help="With --label: ImageNet classes kept per image.")] = 5,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed new and changed images into the index; drop entries whose files are gone."""
    with errors_to_exit():
        kw = {}
        if backbone:
            kw["backbone"] = backbone
        if weights is not None:
            kw["weights"] = weights
        if seed is not None:
            kw["seed"] = seed
        with _open(index, batch_size=batch_size, index_kind=index_type, **kw) as ix:
            with progress_bar("Embedding", quiet or json_out) as update:
                summary = ix.add(paths, progress=update)
            labelled, label_error = None, None
            if label:
                from ..labels import label_index

                try:
                    labelled = label_index(ix, top=top, only_missing=True).labelled
                except VecsearchError as e:  # the index is done: report it, then why labels are not
                    label_error = e
        if json_out:
            print_json(summary.to_dict() | {"index": str(ix.directory)} | ({"labelled": labelled} if label else {}))
            if label_error is not None:
                raise label_error
            return
        out.print(
            f"Indexed {summary.indexed}, unchanged {summary.unchanged}, reused {summary.reused}, "
            f"removed {summary.removed}, failed {len(summary.failed)} of {summary.total} images "
            f"in {summary.seconds:.1f}s -> {ix.directory}",
            highlight=False,
        )
        for f in summary.failed:
            err.print(f"  failed: {f.path}: {f.reason}", highlight=False, markup=False)
        for p in summary.removed_paths:
            err.print(f"  removed: {p}", highlight=False, markup=False)
        if label_error is not None:
            raise label_error
        if labelled is not None:
            out.print(f"Labelled {labelled} images with their top {top} ImageNet classes", highlight=False)


@app.command()
def query(
    image: Annotated[Optional[Path], typer.Argument(help="An image file (an indexed path reuses its stored vector).", show_default=False)] = None,
    index: IndexOpt = None,
    k: Annotated[Optional[int], typer.Option("--k", "-k", help="How many neighbours (default 10; with --label: at most this many, default all).", show_default=False)] = None,
    label: Annotated[Optional[str], typer.Option("--label", help="Instead: list images whose stored ImageNet top-k holds this class (name or WordNet id).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the k indexed images most similar to IMAGE (cosine similarity), or those labelled --label NAME."""
    with errors_to_exit():
        if k is not None and k < 1:
            raise VecsearchError(f"--k must be at least 1, got {k}.")
        if label is not None:
            if image is not None:
                raise VecsearchError("Give either IMAGE or --label NAME, not both.")
            from ..labels import images_with_label
            from .labels import print_label_hits

            with _open(index, create=False) as ix:
                print_label_hits(images_with_label(ix, label, limit=k), json_out)
            return
        if image is None:
            raise VecsearchError("Give an IMAGE to search with, or --label NAME.")
        k = 10 if k is None else k
        with _open(index, create=False) as ix:
            hits = ix.search(image, k)
        if json_out:
            print_json([h.to_dict() for h in hits])
            return
        # Plain lines, never truncated: people copy these paths.
        out.print(f"{'rank':>4}  {'score':>6}  path", highlight=False)
        for h in hits:
            out.print(f"{h.rank:>4}  {h.score:6.4f}  {h.path}", highlight=False, markup=False)


@app.command()
def stats(index: IndexOpt = None, json_out: JsonOpt = False) -> None:
    """Counts, backbone, weights and sizes of an index."""
    with errors_to_exit():
        with _open(index, create=False) as ix:
            s = ix.stats()
            failed = [{"path": r.path, "reason": r.reason} for r in ix.store.failed()]
        if json_out:
            print_json(s | {"failed_images": failed})
            return
        width = max(map(len, s))
        for key, value in s.items():
            out.print(f"{key:<{width}}  {value}", highlight=False, markup=False)


@app.command()
def export(
    out_file: Annotated[Path, typer.Argument(metavar="OUT.npz", help="Where to write the arrays.", show_default=False)],
    index: IndexOpt = None,
) -> None:
    """Write ids, paths and vectors of every indexed image to a NumPy .npz file."""
    with errors_to_exit():
        with _open(index, create=False) as ix:
            n = ix.export(out_file)
        out.print(f"Exported {n} vectors to {out_file}", highlight=False)


# Commands of other concepts register themselves on `app` when imported, in this order
# in `--help`: ImageNet labels, classes of your own, fine-tuning and similarity, the service.
from . import labels  # noqa: E402,F401
from . import classify  # noqa: E402,F401
from . import tune  # noqa: E402,F401
from . import serve  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    app()
