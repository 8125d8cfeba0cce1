"""`vecsearch label` and `search-labels`: ImageNet top-k classes of indexed images, shown like decode_predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..labels import DEFAULT_TOP, NUM_CLASSES
from ._common import IndexOpt, JsonOpt, QuietOpt, app, errors_to_exit, open_index, print_json, progress_bar, say

TopOpt = Annotated[int, typer.Option("--top", min=1, max=NUM_CLASSES, help="How many ImageNet classes to keep per image.")]


def print_labels(items, json_out: bool) -> None:
    """Per image its path, then `rank wnid name prob` rows; or a JSON list."""
    if json_out:
        print_json([item.to_dict() for item in items])
        return
    for item in items:
        say(item.path)
        for lb in item.labels:
            say(f"  {lb.rank:>2}  {lb.wnid}  {lb.name:<30} {lb.prob:.4f}")


def print_label_hits(hits, json_out: bool) -> None:
    if json_out:
        print_json([h.to_dict() for h in hits])
        return
    say(f"{'rank':>4}  {'prob':>6}  path")
    for h in hits:
        say(f"{h.rank:>4}  {h.prob:6.4f}  {h.path}")


@app.command("label")
def label_cmd(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Only these indexed files/folders (default: all).", show_default=False)] = None,
    index: IndexOpt = None,
    top: TopOpt = DEFAULT_TOP,
    weights: Annotated[Optional[str], typer.Option(
        help="Where the ImageNet top comes from: imagenet, or a with-top Keras weights FILE "
             "(default: the weights that built the index).", show_default=False)] = None,
    missing: Annotated[bool, typer.Option("--missing", help="Only label images that have no labels yet.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Label every indexed image with the backbone's own top-K ImageNet classes, store and show them.

    Computed from the stored vectors with the backbone's ImageNet top (no second pass over
    the images). Needs weights that include the top: --weights imagenet, or a with-top file.
    """
    with errors_to_exit():
        with open_index(index, create=False) as ix:
            with progress_bar("Labelling", quiet or json_out) as update:
                ix.label(paths=paths, top=top, only_missing=missing, weights=weights, progress=update)
            items = ix.image_labels(paths)
        print_labels(items, json_out)


@app.command("search-labels")
def search_labels(
    name: Annotated[str, typer.Argument(help="ImageNet class name or WordNet id (e.g. golden_retriever, n02099601).", show_default=False)],
    index: IndexOpt = None,
    k: Annotated[Optional[int], typer.Option("--k", "-k", min=1, help="At most this many images (default: all).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """List images whose stored top-k ImageNet labels hold NAME, most probable first (= query --imagenet)."""
    with errors_to_exit():
        with open_index(index, create=False) as ix:
            hits = ix.search_labels(name, limit=k)
        print_label_hits(hits, json_out)
