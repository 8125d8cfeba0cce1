"""`vecsearch label` and `search-labels`: ImageNet top-k classes of indexed images, shown like decode_predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..labels import DEFAULT_TOP, NUM_CLASSES
from ._common import app, errors_to_exit, open_index, random_weights_warning
from .options import IndexOpt, JsonlOpt, JsonOpt, QuietOpt
from .output import json_mode, model_status, print_rows, print_table, progress_bar, say, warn

TopOpt = Annotated[int, typer.Option("--top", min=1, max=NUM_CLASSES, help="How many ImageNet classes to keep per image.")]


def print_labels(items, json_out: bool, *, jsonl: bool = False, warning: str | None = None) -> None:
    """Per image its path, then `rank wnid name prob` rows, aligned across images; or JSON (lines).

    A `warning` (random weights) goes to stderr once, in every mode (not into each JSON row).
    """
    mode = json_mode(json_out, jsonl)
    if warning:
        warn(f"Warning: {warning}")
    if print_rows([item.to_dict() for item in items], mode):
        return
    every = [lb for item in items for lb in item.labels]
    widths = [0, max((len(str(lb.rank)) for lb in every), default=1), 9, max((len(lb.name) for lb in every), default=4), 6]
    for item in items:
        say(item.path)
        print_table(
            ["", "rank", "wnid", "name", "prob"],
            (("", lb.rank, lb.wnid, lb.name, f"{lb.prob:.4f}") for lb in item.labels),
            right=["rank"],
            header=False,
            min_widths=widths,
        )


def print_label_hits(
    hits, json_out: bool, *, jsonl: bool = False, name: str | None = None, coverage: tuple[int, int] | None = None
) -> None:
    """The images of an ImageNet class: `rank` is the place in this listing, `class_rank` the
    class's place in that image's own top-k; a line saying so when no image has the class.

    `coverage` (labelled, indexed): when only some images are labelled, the listing says how
    many, and how to label the rest, since the others cannot be found by class.
    """
    mode = json_mode(json_out, jsonl)
    labelled, indexed = coverage or (0, 0)
    partial = labelled < indexed
    unlabelled = (
        f"only {labelled} of {indexed} indexed images have ImageNet labels: `vecsearch label --missing` "
        f"labels the other {indexed - labelled}"
    )
    if partial and (hits or mode is not None):
        warn(f"Note: {unlabelled}.")
    if print_rows([h.to_dict() for h in hits], mode):
        return
    if not hits:
        if partial:
            say(f"No labelled image has {name or 'this class'} in its stored ImageNet top-k; {unlabelled}.")
        else:
            say(f"No indexed image has {name or 'this class'} in its stored ImageNet top-k.")
        return
    print_table(
        ["rank", "class_rank", "prob", "path"],
        ((h.rank, h.class_rank, f"{h.prob:.4f}", h.path) for h in hits),
        right=["rank", "class_rank", "prob"],
    )


@app.command("label")
def label_cmd(
    paths: Annotated[
        Optional[list[Path]], typer.Argument(help="Only these indexed files/folders (default: all).", show_default=False)
    ] = None,
    index: IndexOpt = None,
    top: TopOpt = DEFAULT_TOP,
    weights: Annotated[
        Optional[str],
        typer.Option(
            help="Where the ImageNet top comes from: imagenet, or a with-top Keras weights FILE "
            "(default: the weights that built the index).",
            show_default=False,
        ),
    ] = None,
    missing: Annotated[bool, typer.Option("--missing", help="Only label images that have no labels yet.")] = False,
    json_out: JsonOpt = False,
    jsonl: JsonlOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Label every indexed image with the backbone's own top-K ImageNet classes, store and show them.

    Computed from the stored vectors with the backbone's ImageNet top (no second pass over
    the images). Needs weights that include the top: --weights imagenet, or a with-top file.
    """
    with errors_to_exit(), model_status(not (json_out or jsonl)):
        json_mode(json_out, jsonl)
        with open_index(index, create=False) as ix:
            with progress_bar("Labelling", quiet or json_out or jsonl) as update:
                ix.label(paths=paths, top=top, only_missing=missing, weights=weights, progress=update)
            items = ix.image_labels(paths)
            warning = random_weights_warning(ix, "these ImageNet labels")
        print_labels(items, json_out, jsonl=jsonl, warning=warning)


@app.command("search-labels")
def search_labels(
    name: Annotated[
        str, typer.Argument(help="ImageNet class name or WordNet id (e.g. golden_retriever, n02099601).", show_default=False)
    ],
    index: IndexOpt = None,
    k: Annotated[
        Optional[int], typer.Option("--k", "-k", min=1, help="At most this many images (default: all).", show_default=False)
    ] = None,
    json_out: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """List images whose stored top-k ImageNet labels hold NAME, most probable first (= query --imagenet)."""
    with errors_to_exit():
        json_mode(json_out, jsonl)
        with open_index(index, create=False) as ix:
            hits = ix.search_labels(name, limit=k)
            coverage = ix.imagenet_coverage()
        print_label_hits(hits, json_out, jsonl=jsonl, name=name, coverage=coverage)
